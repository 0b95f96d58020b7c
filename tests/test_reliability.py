"""Reliability: clear errors for bad input (library, config and command line), non-finite losses
and gradients, and determinism (same seed and config, same numbers, run twice).

Reader-level errors (tabs, empty titles, duplicates, UTF-8, ...) and the reader fuzz test live in
tests/test_readers.py and tests/test_fuzz_readers.py; this file covers the run-level paths.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from adapter4rec.cli import main
from adapter4rec.config import load_config
from adapter4rec.data.split import build_data
from adapter4rec.encoders.backbone import load_backbone
from adapter4rec.errors import CheckpointError, ConfigError, DataError
from adapter4rec.runtime.io import load_weights, save_weights
from adapter4rec.training.checkpoint import load_checkpoint
from adapter4rec.objectives import OBJECTIVES
from adapter4rec.pipeline import prepare
from adapter4rec.training.trainer import TrainingError, train



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from adapter4rec.data.synthetic import make_domain, write_tiny_bert

    root = tmp_path_factory.mktemp("reliability")
    make_domain(root / "data", "source", n_users=100, n_items=50, seed=4)
    bert = write_tiny_bert(root / "bert", hidden_size=32, num_layers=1, num_heads=2,
                           intermediate_size=64)
    return root, root / "data", bert


def id_sets(src, **kw):
    sets = {"data.path": src, "model.item_encoder": "id", "model.embedding_dim": 16,
            "train.epochs": 2, "train.batch_size": 16, "train.progress": "false",
            "train.amp": "fp32", "train.objective": "bce"}
    sets.update({k.replace("__", "."): v for k, v in kw.items()})
    return [f"{k}={v}" for k, v in sets.items()]


def _copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- data -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("missing", ["users.tsv", "items.tsv"])
def test_missing_data_file_names_the_path(world, tmp_path, missing):
    d = _copy_data(world[1], tmp_path / "d")
    (d / missing).unlink()
    with pytest.raises(DataError, match=rf"{d / missing}: file not found"):
        build_data(d)


def test_data_path_that_is_not_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="data.path"):
        build_data(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="data.path ''"):
        build_data("")


def test_unknown_items_error_by_default_and_drop_with_a_logged_count(world, tmp_path, caplog):
    d = _copy_data(world[1], tmp_path / "d")
    lines = (d / "users.tsv").read_text().splitlines()
    lines[2] += " GHOST1 GHOST2"
    lines[5] += " GHOST1"
    (d / "users.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        build_data(d)
    assert "users.tsv:3: 2 item ids (3 interactions) are not in the items file" in str(e.value)
    assert "'GHOST1' (lines 3, 6)" in str(e.value) and "drop" in str(e.value)
    with caplog.at_level(logging.WARNING, logger="adapter4rec"):
        data = build_data(d, unknown_items="drop")
    assert data.stats["dropped_unknown"] == 3
    assert "dropped 3 interactions" in caplog.text


def test_too_few_users_after_filtering(world, tmp_path):
    d = _copy_data(world[1], tmp_path / "d")
    lines = (d / "users.tsv").read_text().splitlines()
    (d / "users.tsv").write_text("\n".join(l.split("\t")[0] + "\t" + " ".join(l.split("\t")[1].split()[:4])
                                           for l in lines) + "\n")
    with pytest.raises(DataError, match=r"users.tsv: only 0 user\(s\) have at least min_seq_len=5"):
        build_data(d)


def test_an_epoch_that_trains_no_position_stops_the_run(world, tmp_path):
    """3-item users have no training pair (valid and test take two): the run used to train on
    nothing, report loss 0 and exit 0."""
    import numpy as np

    from adapter4rec.data.split import RecData

    short = RecData([f"i{n}" for n in range(1, 9)], [""] * 8, ["a", "b", "c"],
                    [np.array([1, 2, 3]), np.array([4, 5, 6]), np.array([7, 8, 1])], max_seq_len=5)
    with pytest.raises(TrainingError, match="trained no position"):
        train(load_config(overrides=id_sets(world[1])), tmp_path / "run", data=short)
    with pytest.raises(ConfigError, match="data.min_seq_len must be at least 4"):
        build_data(world[1], min_seq_len=3)


def test_titles_longer_than_the_backbone_allows(world):
    cfg = load_config(overrides=[f"data.path={world[1]}", f"model.pretrained={world[2]}",
                                 "data.max_title_len=65"])  # the tiny BERT has 64 positions
    with pytest.raises(ConfigError, match="'data.max_title_len' is 65, but .* has 64 positions"):
        prepare(cfg)


def test_bad_sequence_lengths():
    with pytest.raises(ConfigError, match="data.max_seq_len"):
        load_config(overrides=["data.max_seq_len=0", "model.item_encoder=id"])
    with pytest.raises(ConfigError, match="data.max_seq_len"):
        build_data("unused", max_seq_len=0)


# --- config ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("patch, overrides, key", [
    ({"model": {"dropuot": 0.2}}, [], "model.dropuot"),
    ({"train": {"epochs": "three"}}, [], "train.epochs"),
    ({"train": {"lr": [0.1]}}, [], "train.lr"),
    ({"train": 5}, [], "train"),
    ({}, ["train.epochs=2.5"], "train.epochs"),
    ({}, ["train.progres=false"], "train.progres"),
    ({}, ["train.scheduler=step"], "train.scheduler"),
    ({}, ["train.warmup_steps=-1"], "train.warmup_steps"),
    ({}, ["train.checkpoint_every=-3"], "train.checkpoint_every"),
    ({}, ["model.dropout=1.5"], "model.dropout"),
    # values that used to run and learn nothing, or learn backwards (gradient ascent), and exit 0
    ({}, ["train.lr=-1"], "train.lr"),
    ({}, ["train.lr=.nan"], "train.lr"),
    ({}, ["train.lr_peft=-0.001"], "train.lr_peft"),
    ({}, ["train.weight_decay=.inf"], "train.weight_decay"),
    ({}, ["train.objective=sampled_softmax", "train.num_negatives=0"], "train.num_negatives"),
    ({}, ["cache.batch_size=0"], "cache.batch_size"),
    ({}, ["data.min_seq_len=3"], "data.min_seq_len"),
    ({}, ["train.lr=[1"], "train.lr"),  # a --set value that is not YAML
])
def test_config_errors_name_the_dotted_key(world, tmp_path, capsys, patch, overrides, key):
    cfg = {"data": {"path": str(world[1])}, "model": {"item_encoder": "id"}, "train": {"epochs": 1}}
    for section, value in patch.items():
        cfg[section] = {**cfg[section], **value} if isinstance(value, dict) else value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=rf"'{key}'"):
        load_config(path, overrides)
    # the command line prints it as one line and exits with 2, no traceback
    args = ["train", "--config", str(path), "--output", str(tmp_path / "run")]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adapter4rec: error: ") and f"'{key}'" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_cli_reports_data_and_run_folder_errors(world, tmp_path, capsys):
    d = _copy_data(world[1], tmp_path / "d")
    (d / "items.tsv").unlink()
    assert main(["train", "--output", str(tmp_path / "run"), *sum(
        (["--set", s] for s in id_sets(d)), [])]) == 2
    err = capsys.readouterr().err
    assert f"adapter4rec: error: {d / 'items.tsv'}: file not found" in err
    # --resume on a folder that is not a run
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    # a run killed before its first evaluation (checkpoints, no metrics yet) is not overwritten
    run = tmp_path / "killed"
    (run / "checkpoints" / "latest").mkdir(parents=True)
    assert main(["train", "--output", str(run), "--set", "model.item_encoder=id",
                 "--set", f"data.path={world[1]}"]) == 2
    assert "--resume" in capsys.readouterr().err


# --- pretrained folders and checkpoints -------------------------------------------------------------

def test_pretrained_folder_without_weights_or_config(world, tmp_path):
    bert = Path(world[2])
    no_weights = tmp_path / "no_weights"
    shutil.copytree(bert, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="has a config but no weights"):
        load_backbone(str(no_weights))
    with pytest.raises(ConfigError, match="has no config.json"):
        load_backbone(str(tmp_path))


def test_pretrained_folder_of_another_architecture(world, tmp_path):
    from adapter4rec.data.synthetic import write_tiny_vit

    vit = write_tiny_vit(tmp_path / "vit")
    # a ViT folder where the config asks for a text (BERT-family) encoder
    cfg = load_config(overrides=[f"data.path={world[1]}", f"model.pretrained={vit}"])
    with pytest.raises(ConfigError, match="'vit' model, expected bert"):
        prepare(cfg)
    # ViT weights under a BERT config.json: transformers would initialise every tensor afresh
    mixed = tmp_path / "mixed"
    shutil.copytree(vit, mixed)
    shutil.copy(Path(world[2]) / "config.json", mixed / "config.json")
    with pytest.raises(ConfigError, match=r"weights of the 'bert' model .* are not in its weight file"):
        load_backbone(str(mixed))
    # a config.json whose sizes contradict the weights
    resized = tmp_path / "resized"
    shutil.copytree(world[2], resized)
    c = json.loads((resized / "config.json").read_text())
    c.update(hidden_size=48, intermediate_size=96)
    (resized / "config.json").write_text(json.dumps(c))
    with pytest.raises(ConfigError, match="weight shapes differ from the sizes in config.json"):
        load_backbone(str(resized))


def test_adaptation_checkpoint_that_does_not_fit_lists_the_keys(world, tmp_path):
    _, source_model, _, _ = prepare(load_config(overrides=id_sets(world[1])))
    save_weights({n: p.detach() for n, p in source_model.named_parameters()}, tmp_path / "src.safetensors")
    cfg = load_config(overrides=id_sets(world[1], model__embedding_dim=32,
                                        train__init_from=tmp_path / "src.safetensors"))
    with pytest.raises(CheckpointError) as e:
        prepare(cfg)
    msg = str(e.value)
    assert "does not fit this model" in msg and "shape mismatches" in msg
    assert "user_encoder.blocks.0.attn.key.weight: checkpoint (16, 16) vs model (32, 32)" in msg
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        prepare(load_config(overrides=id_sets(world[1], train__init_from=tmp_path / "none")))


# --- non-finite loss and gradients --------------------------------------------------------------

def poison(monkeypatch, calls: dict[int, str]):
    """On these calls of the objective make the loss NaN ("loss") or, the loss staying finite,
    its gradient ("gradient")."""
    orig = OBJECTIVES["bce"]
    count = [0]

    def objective(h, items, **kw):
        count[0] += 1
        loss = orig(h, items, **kw)
        kind = calls.get(count[0])
        if kind == "loss":
            return loss * float("nan")
        if kind == "gradient":
            return loss + (h.sum() * 0).sqrt()  # value + 0; gradient inf * 0 = NaN
        return loss
    monkeypatch.setitem(OBJECTIVES, "bce", objective)


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_nonfinite_stops_naming_the_step_and_saves_the_state_before_the_update(
        world, tmp_path, monkeypatch, kind):
    poison(monkeypatch, {3: kind})
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as e:
        train(load_config(overrides=id_sets(world[1], train__checkpoint_every=1)), run)
    assert f"non-finite {kind} at global step 3 (epoch 0, batch 3 of 7)" in str(e.value)
    assert "checkpoints/nonfinite" in str(e.value) and "train.nonfinite: skip" in str(e.value)
    w, state = load_checkpoint(run / "checkpoints" / "nonfinite")
    w2, state2 = load_checkpoint(run / "checkpoints" / "latest")  # after update 2
    assert state["global_step"] == state2["global_step"] == 2 and state["trainer"]["step"] == 2
    for k in w:
        assert torch.equal(w[k], w2[k]) and torch.isfinite(w[k]).all(), k
    for i, s in state["optimizer"]["state"].items():
        assert torch.equal(s["exp_avg"], state2["optimizer"]["state"][i]["exp_avg"])


def test_nonfinite_skip_counts_and_completes(world, tmp_path, monkeypatch):
    poison(monkeypatch, {2: "loss", 9: "gradient"})
    run = tmp_path / "run"
    res = train(load_config(overrides=id_sets(world[1], train__nonfinite="skip")), run)
    assert res["skipped_batches"] == 2
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["skipped_batches"] == 2 and saved["global_steps"] == 14
    assert all(torch.isfinite(v).all() for v in load_weights(run / "checkpoints" / "latest").values())
    assert math.isfinite(saved["valid"]["NDCG@10"])
    # the skipped batches are not reported as a good model (a NaN ranked first used to score ~1)
    assert saved["valid"]["HR@10"] < 0.9 and saved["test"]["HR@10"] < 0.9
    assert "batch skipped (2 so far)" in (run / "train.log").read_text()



def test_weights_gone_nan_fail_the_evaluation(world, tmp_path, monkeypatch):
    """A finite update that leaves NaN weights: the evaluation refuses to report a metric (it
    used to rank every NaN target first: HR@10 near 1, saved as checkpoints/best)."""
    from adapter4rec.errors import NonFiniteError
    from adapter4rec.training import trainer as trainer_mod

    epoch = trainer_mod.Trainer._train_epoch

    def poisoned(self):  # the epoch's last update leaves NaN weights behind
        record = epoch(self)
        with torch.no_grad():
            self.model.item_encoder.table.weight.fill_(float("nan"))
        return record
    monkeypatch.setattr(trainer_mod.Trainer, "_train_epoch", poisoned)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="item vectors are not finite"):
        train(load_config(overrides=id_sets(world[1])), run)
    assert not (run / "checkpoints" / "best").exists() and not (run / "metrics.json").exists()
    # under nonfinite: skip the run completes, and the NaN model's metrics are misses, not good
    res = train(load_config(overrides=id_sets(world[1], train__nonfinite="skip")), tmp_path / "skip")
    assert res["valid"] == {"HR@10": 0.0, "NDCG@10": 0.0} and res["test"]["HR@10"] == 0.0
    assert "item vectors are not finite" in (tmp_path / "skip" / "train.log").read_text()


# --- determinism ----------------------------------------------------------------------------------

def test_same_seed_same_numbers(world, tmp_path):
    """Text items through the tiny BERT with dropout on: two runs, identical metrics and weights."""
    sets = [f"data.path={world[1]}", f"model.pretrained={world[2]}", "train.epochs=2",
            "train.batch_size=32", "train.progress=false", "train.amp=fp32",
            "model.embedding_dim=32", "train.scheduler=linear_warmup", "train.warmup_steps=2"]
    runs = [tmp_path / "a", tmp_path / "b"]
    for r in runs:
        train(load_config(overrides=sets), r)
    fa, fb = (json.loads((r / "metrics.json").read_text()) for r in runs)
    fa.pop("train_seconds"), fb.pop("train_seconds")
    assert fa == fb
    la, lb = ([{k: v for k, v in json.loads(l).items() if k != "epoch_seconds"}
               for l in (r / "metrics.jsonl").read_text().splitlines()] for r in runs)
    assert la == lb
    for name in ("best", "latest"):
        wa, wb = (load_weights(r / "checkpoints" / name) for r in runs)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # and a different seed gives different numbers (the seed is really used)
    train(load_config(overrides=sets + ["train.seed=1"]), tmp_path / "c")
    wc = load_weights(tmp_path / "c" / "checkpoints" / "latest")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
