"""The study's pipelines as the scripts run them: a seeded share of the users
(``data.user_fraction``), MIND -> Adressa on the reference repository's file names, an adaptation
taking its shapes from its source run, and one command line for every script. Tiny synthetic data
and a tiny BERT; every training run is one epoch of two steps."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import yaml

from adapter4rec.config import Config, load_config
from adapter4rec.data.split import RecData
from adapter4rec.data.synthetic import make_domain
from adapter4rec.errors import ConfigError
from adapter4rec.experiments import sweep
from adapter4rec.pipeline import data_digest, load_data, prepare

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# The reference repository's file names (westlake-repl/Adapter4Rec, Dataset/, at 721cba5)
MIND_FILES = ("mind_large_users_base.tsv", "mind_large_news_base.tsv")
ADRESSA_FILES = ("Adressa_users_base.tsv", "Adressa_news_base.tsv")


def reference_domain(folder: Path, domain: str, files: tuple[str, str], n_users: int, seed: int):
    """A synthetic domain written under the reference's names (users file, items file)."""
    made = make_domain(folder, domain, n_users=n_users, n_items=40, seed=seed, min_len=5, max_len=26)
    (folder / "users.tsv").rename(folder / files[0])
    (folder / "items.tsv").rename(folder / files[1])
    return made


@pytest.fixture(scope="module")
def users_folder(tmp_path_factory):
    made = make_domain(tmp_path_factory.mktemp("fraction"), "target", n_users=200, n_items=60,
                       seed=3, min_len=3, max_len=12)
    return Path(made["path"])


# --- data.user_fraction ---------------------------------------------------------------------------

def test_user_fraction_keeps_the_same_users_for_the_same_seed(users_folder):
    every = RecData.from_files(users_folder, min_seq_len=5)
    a = RecData.from_files(users_folder, min_seq_len=5, user_fraction=0.3, fraction_seed=7)
    b = RecData.from_files(users_folder, min_seq_len=5, user_fraction=0.3, fraction_seed=7)
    other = RecData.from_files(users_folder, min_seq_len=5, user_fraction=0.3, fraction_seed=8)
    assert a.user_ids == b.user_ids and a.item_ids == b.item_ids
    assert a.n_users == round(0.3 * every.n_users) and set(a.user_ids) < set(every.user_ids)
    assert other.user_ids != a.user_ids  # another seed, other users
    # the kept users keep the file order, and only users past the min_seq_len filter are drawn
    assert a.user_ids == [u for u in every.user_ids if u in set(a.user_ids)]
    assert a.stats["kept_users"] == a.n_users and a.stats["users_eligible"] == every.n_users
    # through the config, as pipeline.load_data reads it
    cfg = load_config(overrides=[f"data.path={users_folder}", "model.item_encoder=id",
                                 "data.user_fraction=0.3", "data.fraction_seed=7"])
    assert load_data(cfg).user_ids == a.user_ids


def test_user_fractions_are_nested_and_items_renumbered_over_the_kept_users(users_folder):
    every = RecData.from_files(users_folder, min_seq_len=5)
    kept = {f: RecData.from_files(users_folder, min_seq_len=5, user_fraction=f, fraction_seed=1)
            for f in (0.1, 0.25, 0.5, 1.0)}
    assert kept[1.0].user_ids == every.user_ids
    for small, large in ((0.1, 0.25), (0.25, 0.5), (0.5, 1.0)):
        assert set(kept[small].user_ids) < set(kept[large].user_ids), (small, large)
    for data in kept.values():  # items 1..N are those the kept users have, in the items file's order
        occurring = {int(i) for s in data.seqs for i in s}
        assert occurring == set(range(1, data.n_items + 1))
        assert data.item_ids == [i for i in every.item_ids if i in set(data.item_ids)]
        original = dict(zip(every.user_ids, every.seqs))
        for u, s in zip(data.user_ids, data.seqs):  # the same interactions, renumbered
            assert [data.item_ids[j - 1] for j in s] == [every.item_ids[j - 1] for j in original[u]]
    assert kept[0.1].n_items < every.n_items


def test_user_fraction_from_frames_keeps_the_users_of_the_files(users_folder):
    import pandas as pd

    rows = [line.split("\t") for line in (users_folder / "users.tsv").read_text().splitlines()]
    inter = pd.DataFrame([(u, i) for u, items in rows for i in items.split()], columns=["user", "item"])
    items = pd.DataFrame([line.split("\t")[:2] for line in
                          (users_folder / "items.tsv").read_text().splitlines()], columns=["item", "title"])
    frames = RecData.from_frames(inter, items, user_col="user", item_col="item", min_seq_len=5,
                                 user_fraction=0.25, fraction_seed=2)
    files = RecData.from_files(users_folder, min_seq_len=5, user_fraction=0.25, fraction_seed=2)
    assert frames.user_ids == files.user_ids


@pytest.mark.parametrize("value", ["0", "0.0", "-0.5", "1.5", "nan", ".inf"])
def test_user_fraction_outside_0_1_is_refused(users_folder, value):
    sets = [f"data.path={users_folder}", "model.item_encoder=id"]
    assert load_config(overrides=sets + ["data.user_fraction=1"]).data.user_fraction == 1.0
    assert load_config(overrides=sets + ["data.user_fraction=0.05"]).data.user_fraction == 0.05
    with pytest.raises(ConfigError, match=r"data\.user_fraction.*\(0, 1\]") as e:
        load_config(overrides=sets + [f"data.user_fraction={value}"])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"data\.user_fraction.*\(0, 1\]"):
        RecData.from_files(users_folder, user_fraction=float(value.replace(".inf", "inf")))


def test_a_fraction_that_keeps_fewer_than_two_users_says_so(users_folder):
    from adapter4rec.errors import DataError

    with pytest.raises(DataError, match=r"data\.user_fraction=0\.001 keeps 1 of the \d+ users"):
        RecData.from_files(users_folder, min_seq_len=5, user_fraction=0.001)


# --- MIND -> Adressa on the reference's file names ------------------------------------------------

QUICK = ["train.epochs=1", "train.batch_size=16", "train.max_steps_per_epoch=2", "train.patience=1",
         "train.progress=false", "train.amp=fp32", "data.max_title_len=12", "eval.item_batch_size=64"]


@pytest.fixture(scope="module")
def mind_run(tmp_path_factory, tiny_bert):
    """Dataset/MIND and Dataset/Adressa with the reference's file names, and a MIND source run of
    configs/pretrain/mind_bert.yaml (tiny BERT, d = 16, half the users) made by its script's entry
    point."""
    root = tmp_path_factory.mktemp("mind_adressa")
    reference_domain(root / "Dataset" / "MIND", "source", MIND_FILES, n_users=80, seed=0)
    reference_domain(root / "Dataset" / "Adressa", "target", ADRESSA_FILES, n_users=60, seed=1)
    run = root / "runs" / "pretrain_mind"
    sets = [f"data.path={root / 'Dataset' / 'MIND'}", f"model.pretrained={tiny_bert}",
            "model.embedding_dim=16", "data.user_fraction=0.5", *QUICK]
    argv = ["--output", str(run)] + [a for s in sets for a in ("--set", s)]
    assert sweep.pretrain_main("mind_bert", "", argv, config_dir=CONFIGS / "pretrain") == 0
    return {"root": root, "run": run, "argv": argv, "bert": tiny_bert,
            "adressa": root / "Dataset" / "Adressa"}


def adressa_sets(mind_run, *extra):
    return [f"data.path={mind_run['adressa']}", f"model.pretrained={mind_run['bert']}",
            f"train.init_from={mind_run['run']}", "peft.options.item_bottleneck=8", *QUICK, *extra]


def test_mind_source_run_reads_the_reference_files_and_records_its_users(mind_run, capsys):
    run = mind_run["run"]
    saved = load_config(run / "config.yaml")
    assert (saved.data.users_file, saved.data.items_file) == MIND_FILES
    assert saved.data.max_seq_len == 20 and saved.model.embedding_dim == 16
    data = load_data(saved)  # the run's own config.yaml rebuilds the same half of the users
    every = RecData.from_files(saved.data.path, *MIND_FILES, min_seq_len=5, max_seq_len=20)
    assert data.n_users == round(0.5 * every.n_users)
    assert (run / "users_kept.txt").read_text().splitlines() == data.user_ids
    info = json.loads((run / "run.json").read_text())
    assert info["fingerprints"]["data"] == data_digest(data)
    # the same command again: the finished run is kept, not overwritten
    capsys.readouterr()
    assert sweep.pretrain_main("mind_bert", "", mind_run["argv"], config_dir=CONFIGS / "pretrain") == 0
    assert "done already" in capsys.readouterr().out


def test_adressa_adaptation_takes_the_source_shapes(mind_run, tmp_path, capsys):
    argv = ["--methods", "houlsby", "--output", str(tmp_path)]
    argv += [a for s in adressa_sets(mind_run, "data.user_fraction=0.5") for a in ("--set", s)]
    assert sweep.main("adressa", "", argv, config_dir=CONFIGS / "adapt") == 0
    run = tmp_path / "houlsby"
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert (resolved["data"]["users_file"], resolved["data"]["items_file"]) == ADRESSA_FILES
    # the adressa configs leave the shapes at the defaults: MIND's are taken (max_seq_len 20, d 16)
    assert resolved["data"]["max_seq_len"] == 20 and resolved["model"]["embedding_dim"] == 16
    assert json.loads((run / "metrics.json").read_text())["peft"]["method"] == "houlsby"
    kept = (run / "users_kept.txt").read_text().splitlines()
    assert kept == load_data(load_config(run / "config.yaml")).user_ids
    assert "houlsby" in capsys.readouterr().out


@pytest.mark.parametrize("key, value, source", [("data.max_seq_len", 15, 20),
                                                ("model.embedding_dim", 32, 16)])
def test_a_shape_other_than_the_source_is_a_one_line_error(mind_run, key, value, source):
    cfg = load_config(CONFIGS / "adapt" / "adressa_houlsby.yaml", adressa_sets(mind_run, f"{key}={value}"))
    with pytest.raises(ConfigError) as e:
        prepare(cfg)
    msg = str(e.value)
    assert "\n" not in msg and f"'{key}'" in msg and str(mind_run["run"]) in msg
    assert f"is {value}" in msg and f"has {source}" in msg


def test_a_shape_equal_to_the_source_or_the_default_loads(mind_run):
    from adapter4rec.pipeline import adopt_source_shapes

    cfg = load_config(CONFIGS / "adapt" / "adressa_houlsby.yaml", adressa_sets(mind_run, "data.max_seq_len=20"))
    assert cfg.model.embedding_dim == 64  # the package default, before the source is read
    assert adopt_source_shapes(cfg) == {"model.embedding_dim": 16}
    data, model, _, _ = prepare(load_config(CONFIGS / "adapt" / "adressa_houlsby.yaml",
                                            adressa_sets(mind_run)))
    assert data.max_seq_len == 20 and model.user_encoder.pos.weight.shape == (20, 16)


@pytest.mark.parametrize("text, what", [("train: [unclosed\n", "cannot be read"),
                                         ("- a list\n", "not a mapping")])
def test_an_unreadable_source_config_is_a_one_line_error(tmp_path, text, what):
    from adapter4rec.pipeline import adopt_source_shapes

    (tmp_path / "config.yaml").write_text(text)
    cfg = Config()
    cfg.train.init_from = str(tmp_path)
    with pytest.raises(ConfigError) as e:
        adopt_source_shapes(cfg)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"train.init_from {tmp_path}: ") and what in msg
    assert str(tmp_path / "config.yaml") in msg


# --- one command line for every script ------------------------------------------------------------

SCRIPTS = ["adapt_adressa", "adapt_scientific", "adapt_amazon", "pretrain_mind", "pretrain_instrument",
           "pretrain_hm"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_has_the_same_options(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "scripts" / f"{script}.py"), run_name="__main__")
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in ("--set", "--output", "--overwrite", "--dry-run"):
        assert option in out, (script, option)
    assert ("--methods" in out) == script.startswith("adapt_"), script


@pytest.mark.parametrize("script", ["adapt_adressa", "adapt_amazon"])
def test_adaptation_scripts_take_methods_as_a_list(script, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--methods", "houlsby", "lora", "--dry-run"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "scripts" / f"{script}.py"), run_name="__main__")
        raise SystemExit(0)  # adapt_amazon.py returns instead of exiting
    assert e.value.code == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["method", "config", "init_from"]  # each run's source is listed
    assert [row.split()[0] for row in rows] == ["houlsby", "lora"]
    assert all(row.split()[2].startswith("runs/pretrain") for row in rows)
