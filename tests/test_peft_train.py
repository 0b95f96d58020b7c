"""PEFT methods end to end: `adapter4rec train` with every method, run folders as domain adapters,
the adaptation configs and scripts. Small synthetic target domains and a tiny BERT; a few seconds
per method on a CPU."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from adapter4rec import cli, peft
from adapter4rec.config import load_config
from adapter4rec.data.synthetic import make_domain
from adapter4rec.model import build_model
from adapter4rec.runtime.io import load_into, load_weights, save_weights
from adapter4rec.pipeline import load_data, prepare

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["full", "frozen", "houlsby", "pfeiffer", "parallel", "kadapter", "compacter", "lora",
           "prompt", "layernorm", "bitfit"]
SMALL = {"houlsby": "item_bottleneck=8", "pfeiffer": "item_bottleneck=8", "parallel": "item_bottleneck=8",
         "kadapter": "item_bottleneck=8", "compacter": "item_bottleneck=8", "prompt": "n_tokens=4"}



@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert):
    """Two small target domains, a source checkpoint and a base YAML config."""
    root = tmp_path_factory.mktemp("peft_train")
    a = make_domain(root / "books", "target", n_users=48, n_items=40, seed=0, max_len=10)["path"]
    b = make_domain(root / "games", "target", n_users=48, n_items=40, seed=1, max_len=10)["path"]
    base = {"data": {"path": a, "max_title_len": 12},
            "model": {"pretrained": tiny_bert, "embedding_dim": 16},
            "train": {"objective": "bce", "epochs": 3, "batch_size": 16, "lr": 5e-3, "lr_peft": 5e-3,
                      "lr_backbone": 1e-3, "progress": False, "amp": "fp32"}}
    cfg = load_config(base=base)
    torch.manual_seed(0)
    _, model, _, _ = prepare(cfg)  # stands for the source-domain run
    source = root / "source.safetensors"
    save_weights({k: v.contiguous() for k, v in model.state_dict().items()}, source)
    base["train"]["init_from"] = str(source)
    yaml_path = root / "base.yaml"
    import yaml

    yaml_path.write_text(yaml.safe_dump(base), encoding="utf-8")
    return {"root": root, "books": a, "games": b, "yaml": yaml_path, "source": source, "base": base,
            "bert": tiny_bert}


def losses(run: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", METHODS)
def test_cli_train_with_every_method_learns(setup, method):
    run = setup["root"] / "runs" / method
    args = ["train", "--config", str(setup["yaml"]), "--output", str(run), "--set", f"peft.method={method}"]
    if method in SMALL:
        args += ["--set", f"peft.options.{SMALL[method]}"]
    assert cli.main(args) == 0
    ls = losses(run)
    assert len(ls) == 3 and ls[-1] < ls[0] - 0.02, (method, ls)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["peft"]["method"] == method
    # the run's checkpoint holds exactly the trainable parameters
    weights = load_weights(run / "checkpoints" / "best")
    assert sum(v.numel() for v in weights.values()) == metrics["trainable_params"]
    if method != "full":
        assert metrics["trainable_params"] < metrics["total_params"] / 2


def test_cli_rejects_an_unknown_option(setup, capsys):
    run = setup["root"] / "runs" / "bad"
    assert cli.main(["train", "--config", str(setup["yaml"]), "--output", str(run), "--set",
                     "peft.method=houlsby", "--set", "peft.options.bottlenek=8"]) == 2
    assert "peft.options.bottlenek" in capsys.readouterr().err


def backbone_model(setup, path):
    """The backbone + source checkpoint, without PEFT (what a served model starts from)."""
    cfg = load_config(base={**setup["base"], "data": {**setup["base"]["data"], "path": str(path)}})
    data = load_data(cfg)
    model = build_model(cfg, data)
    load_into(model, load_weights(setup["source"]), "source")
    return model.eval(), model.content


def test_run_folders_are_domain_adapters_over_one_backbone(setup):
    """Two target domains trained with the same method; one backbone switches between their
    adapters (the run folders) and gives each domain's own outputs."""
    from adapter4rec.training.trainer import train

    runs = {}
    for domain in ("books", "games"):
        cfg = load_config(base=setup["base"], overrides=[
            f"data.path={setup[domain]}", "peft.method=houlsby", "peft.options.item_bottleneck=8",
            "peft.options.tune_layernorm=true", "train.epochs=1"])
        runs[domain] = setup["root"] / "domains" / domain
        train(cfg, runs[domain])
    model, content = backbone_model(setup, setup["books"])
    batch = content.get(torch.arange(1, 21).numpy())
    bank = peft.AdapterBank(model)
    for domain, run in runs.items():
        bank.add(domain, run)
    for domain in ("games", "books", "games"):
        own = load_config(runs[domain] / "config.yaml")
        _, own_model, _, _ = prepare(own)  # the run rebuilt on its own, as `adapter4rec evaluate`
        load_into(own_model, load_weights(runs[domain] / "checkpoints" / "best"), str(runs[domain]))
        own_model.eval()
        bank.activate(domain)
        with torch.no_grad():
            assert torch.equal(model.encode_items(batch), own_model.encode_items(batch)), domain
            seq, mask = torch.randn(3, 10, 16), torch.ones(3, 10, dtype=torch.bool)
            assert torch.equal(model.user_encoder(seq, mask), own_model.user_encoder(seq, mask))


def test_adapter_file_from_a_run_and_sizes(setup, tmp_path):
    run = setup["root"] / "runs" / "lora"
    if not (run / "metrics.json").is_file():
        pytest.skip("needs the lora run of test_cli_train_with_every_method_learns")
    model, content = backbone_model(setup, setup["books"])
    peft.load_adapter(model, run)
    info = peft.save_adapter(model, tmp_path / "lora.safetensors")
    assert info["adapter_bytes"] < info["model_bytes"] / 10
    fresh, _ = backbone_model(setup, setup["books"])
    peft.load_adapter(fresh, tmp_path / "lora.safetensors")
    batch = content.get(torch.arange(1, 11).numpy())
    with torch.no_grad():
        assert torch.equal(fresh.encode_items(batch), model.encode_items(batch))


# --- the adaptation configs and scripts --------------------------------------------------------

@pytest.mark.parametrize("target", ["scientific", "adressa"])
def test_adaptation_configs_exist_and_load_for_every_method(target, monkeypatch):
    from adapter4rec.peft.options import parse

    monkeypatch.setenv("ADAPTER4REC_DATASETS", "../shared/datasets")  # where the real data lives here

    want = {"scientific": ("../shared/datasets/amazon-scientific", "pretrained_models/all-MiniLM-L6-v2",
                           "runs/pretrain_instrument"),
            "adressa": ("Dataset/Adressa", "pretrained_models/bert-base-uncased", "runs/pretrain_mind")}
    for method in METHODS:
        cfg = load_config(ROOT / "configs" / "adapt" / f"{target}_{method}.yaml")
        assert cfg.peft.method == method
        assert (cfg.data.path, cfg.model.pretrained, cfg.train.init_from) == want[target]
        assert cfg.train.objective == "bce"
        parse(peft.get(method).options, method, cfg.peft.options)  # every option valid


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_adaptation_scripts(setup, tmp_path, capsys):
    from adapter4rec.experiments import sweep

    for target in ("scientific", "adressa"):
        _script(f"adapt_{target}")  # importable, runs nothing on import
        assert sweep.main(target, "", ["--dry-run"], config_dir=ROOT / "configs" / "adapt") == 0
        out = capsys.readouterr().out
        assert all(f"{target}_{m}.yaml" in out for m in METHODS)
    # one method for real, on the synthetic domain, through the same entry point
    sets = [f"data.path={setup['books']}", f"model.pretrained={setup['bert']}", "model.embedding_dim=16",
            f"train.init_from={setup['source']}", "train.epochs=1", "train.batch_size=16",
            "data.max_title_len=12", "train.progress=false", "train.amp=fp32",
            "peft.options.item_bottleneck=8", "data.users_file=users.tsv", "data.items_file=items.tsv"]
    argv = ["--methods", "houlsby", "--output", str(tmp_path)] + [a for s in sets for a in ("--set", s)]
    assert sweep.main("adressa", "", argv, config_dir=ROOT / "configs" / "adapt") == 0
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert rows[0]["method"] == "houlsby" and rows[0]["adapter_mb"] < rows[0]["model_mb"]
    assert "houlsby" in capsys.readouterr().out
    # a finished run is skipped
    assert sweep.main("adressa", "", argv, config_dir=ROOT / "configs" / "adapt") == 0
    assert "done already" in capsys.readouterr().out


def test_cli_lists_every_method_with_its_options(capsys):
    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out
    for m in peft.available():
        assert f"\n{m}: " in "\n" + out, m
        for key, _, _ in peft.options_of(m):
            assert f"    {key} = " in out, (m, key)
