"""Config files: ``extends`` (bases, chains, lists, errors), the layering order, save/reload, and
that every shipped config under configs/ loads."""
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from adapter4rec.config import Config, load_config, reference_markdown, save_config
from adapter4rec.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
MODEL = {"pretrained": "pretrained_models/some-bert"}  # validate() wants a name, not a folder


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_extends_a_base_in_the_same_folder(tmp_path):
    write(tmp_path / "base.yaml", {"data": {"path": "d", "max_seq_len": 7}, "model": MODEL,
                                   "train": {"lr": 0.25, "epochs": 3}})
    child = write(tmp_path / "child.yaml", {"extends": "base.yaml", "peft": {"method": "houlsby"}})
    cfg = load_config(child)
    assert (cfg.data.path, cfg.data.max_seq_len, cfg.train.lr, cfg.train.epochs) == ("d", 7, 0.25, 3)
    assert cfg.peft.method == "houlsby"
    assert cfg.data.users_file == "users.tsv"  # neither file sets it: the package default


def test_a_chain_of_two_resolves_relative_to_each_file(tmp_path, monkeypatch):
    write(tmp_path / "root.yaml", {"model": MODEL, "train": {"lr": 0.1, "epochs": 1, "patience": 9}})
    write(tmp_path / "mid" / "mid.yaml", {"extends": "../root.yaml", "train": {"lr": 0.2, "epochs": 2}})
    leaf = write(tmp_path / "mid" / "leaf" / "leaf.yaml", {"extends": "../mid.yaml", "train": {"lr": 0.3}})
    monkeypatch.chdir(tmp_path / "mid" / "leaf")  # paths are relative to the file, not the cwd
    cfg = load_config(leaf.name)
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.patience) == (0.3, 2, 9)


def test_a_list_of_bases_applies_in_order(tmp_path):
    write(tmp_path / "a.yaml", {"model": MODEL, "train": {"lr": 0.1, "epochs": 1}, "eval": {"k": 5}})
    write(tmp_path / "b.yaml", {"train": {"lr": 0.2}})
    child = write(tmp_path / "c.yaml", {"extends": ["a.yaml", "b.yaml"], "eval": {"k": 20}})
    cfg = load_config(child)
    assert (cfg.train.lr, cfg.train.epochs, cfg.eval.k) == (0.2, 1, 20)


def test_the_child_overrides_scalars_and_merges_peft_options(tmp_path):
    write(tmp_path / "base.yaml", {"model": MODEL, "train": {"lr_peft": 0.001},
                                   "peft": {"method": "lora", "options": {
                                       "item_rank": 12, "user_rank": 4, "targets": ["query", "value"]}}})
    child = write(tmp_path / "child.yaml", {"extends": "base.yaml", "train": {"lr_peft": 0.004},
                                            "peft": {"options": {"item_rank": 8, "targets": ["key"]}}})
    cfg = load_config(child)
    assert cfg.train.lr_peft == 0.004
    assert cfg.peft.method == "lora"  # the base's, the child does not name one
    # options merge key by key; a list is a value, so it replaces (no concatenation)
    assert cfg.peft.options == {"item_rank": 8, "user_rank": 4, "targets": ["key"]}


def test_layering_base_dict_then_yaml_chain_then_set(tmp_path):
    write(tmp_path / "base.yaml", {"model": MODEL, "train": {"lr": 0.1, "epochs": 4},
                                   "peft": {"method": "lora", "options": {"item_rank": 12}}})
    child = write(tmp_path / "child.yaml", {"extends": "base.yaml", "train": {"epochs": 5}})
    cfg = load_config(child, ["train.lr=0.5", "peft.options.user_rank=3"],
                      base={"train": {"lr": 9.0, "epochs": 9, "patience": 7}})
    assert cfg.train.lr == 0.5               # --set over the base file
    assert cfg.train.epochs == 5             # the child over its base file over the base dict
    assert cfg.train.patience == 7           # only the base dict sets it
    assert cfg.peft.options == {"item_rank": 12, "user_rank": 3}


def test_missing_base_names_both_files(tmp_path):
    child = write(tmp_path / "child.yaml", {"extends": "nowhere/base.yaml", "model": MODEL})
    with pytest.raises(ConfigError) as e:
        load_config(child)
    msg = str(e.value)
    assert str(child) in msg and "nowhere/base.yaml" in msg and "\n" not in msg


def test_a_cycle_of_extends_is_an_error_naming_the_chain(tmp_path):
    a = write(tmp_path / "a.yaml", {"extends": "b.yaml", "model": MODEL})
    write(tmp_path / "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle") as e:
        load_config(a)
    assert "a.yaml" in str(e.value) and "b.yaml" in str(e.value) and "\n" not in str(e.value)
    itself = write(tmp_path / "self.yaml", {"extends": "self.yaml", "model": MODEL})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(itself)


@pytest.mark.parametrize("value", [3, {"file": "base.yaml"}, ["base.yaml", 1], None])
def test_extends_must_be_a_path_or_a_list_of_paths(tmp_path, value):
    write(tmp_path / "base.yaml", {"model": MODEL})
    child = write(tmp_path / "child.yaml", {"extends": value})
    with pytest.raises(ConfigError, match="'extends' must be") as e:
        load_config(child)
    assert str(child) in str(e.value) and "\n" not in str(e.value)


def test_an_error_in_a_base_names_the_base_file(tmp_path):
    base = write(tmp_path / "base.yaml", {"model": MODEL, "train": {"lrr": 1.0}})
    child = write(tmp_path / "child.yaml", {"extends": "base.yaml"})
    with pytest.raises(ConfigError, match="unknown config key 'train.lrr'") as e:
        load_config(child)
    assert str(e.value).startswith(f"{base}: ")


def test_saved_config_is_resolved_and_reloads_equal(tmp_path):
    write(tmp_path / "base.yaml", {"model": MODEL, "train": {"lr": 0.1},
                                   "peft": {"method": "lora", "options": {"item_rank": 12}}})
    child = write(tmp_path / "child.yaml", {"extends": "base.yaml", "train": {"epochs": 2}})
    cfg = load_config(child, ["eval.k=20"])
    out = tmp_path / "run" / "config.yaml"
    out.parent.mkdir()
    save_config(cfg, out)
    assert "extends" not in yaml.safe_load(out.read_text(encoding="utf-8"))
    assert load_config(out).to_dict() == cfg.to_dict()
    assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]  # no temporary file left


CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_every_shipped_config_loads(path):
    load_config(path)  # model.pretrained may name a folder not downloaded here: not checked


@pytest.mark.parametrize("target", ["scientific", "adressa"])
def test_adaptation_method_configs_extend_their_target_base(target):
    base = load_config(ROOT / "configs" / "adapt" / f"{target}_base.yaml")
    for path in sorted((ROOT / "configs" / "adapt").glob(f"{target}_*.yaml")):
        if path.stem == f"{target}_base":
            continue
        assert yaml.safe_load(path.read_text(encoding="utf-8"))["extends"] == f"{target}_base.yaml"
        cfg = load_config(path)
        assert (cfg.data, cfg.model) == (base.data, base.model), path
        assert cfg.train.init_from == base.train.init_from and cfg.peft.method == path.stem.split("_", 1)[1]


@pytest.mark.parametrize("target", ["scientific", "adressa"])
def test_adaptation_lora_configs_scale_by_one(target):
    """Their alpha was loralib's 1 (the reference's), a scale of 1/12: with Adam that trains LoRA at
    a twelfth of the learning rate the study's shared grid gives the other methods
    (docs/differences.md). alpha = r, as Hu et al."""
    o = load_config(ROOT / "configs" / "adapt" / f"{target}_lora.yaml").peft.options
    assert o["item_alpha"] / o["item_rank"] == 1.0 and o["user_alpha"] / o["user_rank"] == 1.0


def test_a_base_file_is_not_a_method():
    from adapter4rec.peft import available

    # the sweep runs <target>_<method>.yaml for each available() method: <target>_base.yaml never
    assert "base" not in available()
    assert load_config(ROOT / "configs" / "adapt" / "scientific_iisan.yaml").peft.method == "iisan"


def test_reference_table_lists_every_key():
    table = reference_markdown()
    cfg = Config()
    for section in fields(Config):
        for f in fields(getattr(cfg, section.name)):
            assert f"| `{section.name}.{f.name}` |" in table, f"{section.name}.{f.name}"


def test_environment_variables_in_values(tmp_path, monkeypatch):
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  path: ${MY_DATA:-Dataset}/sci\nmodel:\n  item_encoder: id\n")
    monkeypatch.delenv("MY_DATA", raising=False)
    assert load_config(f).data.path == "Dataset/sci"
    monkeypatch.setenv("MY_DATA", "/data")
    assert load_config(f).data.path == "/data/sci"
    f.write_text("data:\n  path: ${NOT_SET_ANYWHERE}/sci\nmodel:\n  item_encoder: id\n")
    with pytest.raises(ConfigError, match=r"'data.path' uses \$\{NOT_SET_ANYWHERE\}, which is not set"):
        load_config(f)
    assert load_config(f, ["data.path=/x"]).data.path == "/x"
