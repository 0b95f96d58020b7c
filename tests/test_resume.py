"""Resume: a run killed at any point continues from checkpoints/latest and ends bit-identical (CPU)
to an uninterrupted run of the same seed: metrics, best and latest weights.

The SIGKILL test runs the real command line in subprocesses; the kill lands at a known point
(the run blocks in a training step after its last checkpoint, via tests/reliability_helper.py), so
nothing depends on timing. The other tests crash a run in-process at chosen points (an exception
leaves the files exactly as a kill there would) and resume it in-process.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from adapter4rec.config import load_config
from adapter4rec.errors import CheckpointError
from adapter4rec import pipeline
from adapter4rec.training import checkpoint as ckpt
from adapter4rec.training import trainer
from adapter4rec.runtime.io import load_weights
from adapter4rec.training.checkpoint import find_checkpoint, load_checkpoint
from adapter4rec.training.trainer import train

HELPER = Path(__file__).with_name("reliability_helper.py")
TIMINGS = ("train_seconds", "epoch_seconds")



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from adapter4rec.data.synthetic import make_domain, write_tiny_bert

    root = tmp_path_factory.mktemp("resume")
    make_domain(root / "data", "source", n_users=120, n_items=60, seed=2)
    bert = write_tiny_bert(root / "bert", hidden_size=32, num_layers=1, num_heads=2,
                           intermediate_size=64)  # dropout 0.1: the RNG restore must cover it
    return root / "data", bert


def _records(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append({k: v for k, v in r.items() if k not in TIMINGS})
    return out


def assert_same_run(a: Path, b: Path) -> None:
    """Same final metrics, per-epoch records and weights (bit for bit), timings aside."""
    fa, fb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    for f in (fa, fb):
        for k in TIMINGS:
            f.pop(k, None)
    assert fa == fb
    assert _records(a) == _records(b)
    for name in ("best", "latest"):
        wa, wb = load_weights(a / "checkpoints" / name), load_weights(b / "checkpoints" / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)


# --- SIGKILL mid-epoch, through the command line -----------------------------------------------

def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "adapter4rec.cli", *args]


def test_sigkill_mid_epoch_then_resume_is_bit_identical(data, tmp_path):
    src, bert = data
    sets = [f"data.path={src}", f"model.pretrained={bert}", "train.epochs=3", "train.batch_size=16",
            "train.progress=false", "train.amp=fp32", "train.checkpoint_every=3",
            "train.scheduler=cosine", "train.warmup_steps=4", "model.embedding_dim=32", "train.seed=7"]
    args = [a for s in sets for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the same threads in every process: same rounding
    ref, run, probe = tmp_path / "ref", tmp_path / "run", tmp_path / "probe"
    # 120 users / 16 = 8 steps per epoch; checkpoints at global steps 3, 6, (8), 9, 12, ...
    # the run blocks in its 14th step: the last checkpoint is step 12 (epoch 1, step 4) and step 13
    # is done but lost.
    reference = subprocess.Popen(_cli("train", "--output", str(ref), *args), env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = subprocess.Popen([sys.executable, str(HELPER), "--block-at-forward", "14",
                               "--report", str(probe), "--", "train", "--output", str(run), *args],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600  # generous: only a hung run gets there
    while not (probe / "blocked").exists():
        if victim.poll() is not None:
            pytest.fail("the run ended before reaching the kill point:\n" + victim.stdout.read()[-3000:])
        assert time.monotonic() < deadline, "the run never reached the kill point"
        time.sleep(0.05)
    _, state = load_checkpoint(run / "checkpoints" / "latest")
    assert state["global_step"] == 12 and state["trainer"]["epoch"] == 1 and state["trainer"]["step"] == 4
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    victim.stdout.close()
    assert not (run / "metrics.json").exists()

    resumed = subprocess.run(_cli("train", "--resume", str(run)), env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "global step 12" in resumed.stderr
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out[-3000:]
    assert_same_run(ref, run)


# --- crash points, in-process --------------------------------------------------------------------

class Crash(BaseException):
    """Stands for a kill: nothing in the library catches it."""


def _id_sets(src, **kw):
    sets = {"data.path": src, "model.item_encoder": "id", "model.embedding_dim": 16,
            "model.num_heads": 2, "train.epochs": 4, "train.batch_size": 16, "train.patience": 2,
            "train.progress": "false", "train.amp": "fp32", "train.objective": "bce",
            "train.checkpoint_every": 3, "train.scheduler": "linear_warmup",
            "train.warmup_steps": 5, "train.seed": 3}
    sets.update(kw)
    return [f"{k}={v}" for k, v in sets.items()]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "run"
    train(load_config(overrides=_id_sets(data[0])), run)
    return run


def _crash_at_forward(monkeypatch, n):
    from adapter4rec import model as model_mod

    calls = [0]
    forward = model_mod.Recommender.forward

    def crashing(self, batch):
        calls[0] += 1
        if calls[0] == n:
            raise Crash
        return forward(self, batch)
    monkeypatch.setattr(model_mod.Recommender, "forward", crashing)


def _crash_at_evaluate(monkeypatch, n):
    calls = [0]
    evaluate = pipeline.evaluate

    def crashing(*a, **kw):
        calls[0] += 1
        if calls[0] == n:
            raise Crash
        return evaluate(*a, **kw)
    monkeypatch.setattr(pipeline, "evaluate", crashing)


def _crash_before_epoch_checkpoint(monkeypatch, epoch):
    """After the epoch's metrics.jsonl line, before its latest checkpoint."""
    save = trainer.save_checkpoint

    def crashing(folder, model, state):
        if Path(folder).name == "latest" and state["trainer"]["epoch"] == epoch + 1 \
                and state["trainer"]["step"] == 0:
            raise Crash
        return save(folder, model, state)
    monkeypatch.setattr(trainer, "save_checkpoint", crashing)


def _crash_between_renames(monkeypatch, step):
    """Saving latest at ``step``: after the old folder moved aside, before the new one moved in."""
    rename = os.rename
    live = [False]
    save = trainer.save_checkpoint

    def watching(folder, model, state):
        live[0] = Path(folder).name == "latest" and state["global_step"] == step
        return save(folder, model, state)

    def crashing(a, b):
        rename(a, b)
        if live[0] and Path(b).name == ".old-latest":
            raise Crash
    monkeypatch.setattr(trainer, "save_checkpoint", watching)
    monkeypatch.setattr(ckpt.os, "rename", crashing)


CRASHES = {
    "mid_epoch_between_checkpoints": lambda mp: _crash_at_forward(mp, 11),   # last ckpt: step 9
    "before_any_checkpoint": lambda mp: _crash_at_forward(mp, 2),
    "during_evaluation": lambda mp: _crash_at_evaluate(mp, 2),
    "after_metrics_line_before_checkpoint": lambda mp: _crash_before_epoch_checkpoint(mp, 1),
    "mid_checkpoint_write": lambda mp: _crash_between_renames(mp, 12),
}


@pytest.mark.parametrize("crash", CRASHES.values(), ids=CRASHES.keys())
def test_crash_then_resume_matches_uninterrupted(data, reference, tmp_path, monkeypatch, crash):
    run = tmp_path / "run"
    cfg = load_config(overrides=_id_sets(data[0]))
    with monkeypatch.context() as mp:
        crash(mp)
        with pytest.raises(Crash):
            train(cfg, run)
    if crash is CRASHES["mid_checkpoint_write"]:
        assert not (run / "checkpoints" / "latest").exists()
        assert find_checkpoint(run / "checkpoints" / "latest").name == ".old-latest"
        # what a kill in the middle of writing the files would leave: partial temporaries
        (run / "checkpoints" / ".new-latest.x1y2").mkdir()
        (run / "checkpoints" / ".new-latest.x1y2" / ".model.safetensors.abc").write_bytes(b"\0" * 10)
        (run / ".metrics.json.q9w8").write_text("{")
    train(load_config(run / "config.yaml"), run, resume=True)
    assert_same_run(reference, run)
    assert not (run / "checkpoints" / ".old-latest").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "latest"]
    assert not list(run.glob(".*"))
    # resuming a finished run changes nothing
    train(load_config(run / "config.yaml"), run, resume=True)
    assert_same_run(reference, run)


def test_frozen_backbone_checkpoint_holds_trainable_parts_and_resumes(data, tmp_path, monkeypatch):
    src, bert = data
    sets = [f"data.path={src}", f"model.pretrained={bert}", "train.epochs=2", "train.batch_size=32",
            "train.progress=false", "train.amp=fp32", "train.checkpoint_every=2",
            "model.embedding_dim=32", "peft.method=lora", "train.num_workers=2"]
    ref = tmp_path / "ref"
    res = train(load_config(overrides=sets), ref)
    weights, state = load_checkpoint(ref / "checkpoints" / "latest")
    assert sum(w.numel() for w in weights.values()) == res["trainable_params"] < res["total_params"]
    assert not any(k.startswith("item_encoder.backbone.") and "lora" not in k for k in weights)
    assert {"optimizer", "scheduler", "rng", "trainer", "sampler", "global_step"} <= state.keys()
    run = tmp_path / "run"
    with monkeypatch.context() as mp:
        _crash_at_forward(mp, 4)  # 4 steps per epoch; the last checkpoint: epoch 0, step 2
        with pytest.raises(Crash):
            train(load_config(overrides=sets), run)
    train(load_config(run / "config.yaml"), run, resume=True)
    assert_same_run(ref, run)


# --- checkpoint files ---------------------------------------------------------------------------

def test_checkpoint_files_that_do_not_belong_together_are_refused(reference, tmp_path):
    import shutil

    from safetensors.torch import save_file

    latest = tmp_path / "latest"
    shutil.copytree(reference / "checkpoints" / "latest", latest)
    weights, state = load_checkpoint(latest)
    # weights from another step
    save_file(weights, latest / "model.safetensors", metadata={"global_step": "1"})
    with pytest.raises(CheckpointError, match="do not belong together"):
        load_checkpoint(latest)
    # a truncated weights file
    data = (reference / "checkpoints" / "latest" / "model.safetensors").read_bytes()
    (latest / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(latest)
    # a truncated state file
    shutil.copy(reference / "checkpoints" / "latest" / "model.safetensors", latest)
    state_bytes = (latest / "trainer_state.pt").read_bytes()
    (latest / "trainer_state.pt").write_bytes(state_bytes[:100])
    with pytest.raises(CheckpointError, match="trainer_state.pt"):
        load_checkpoint(latest)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(tmp_path / "nothing")


def test_resume_with_other_batches_per_epoch_mid_epoch_is_refused(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    with monkeypatch.context() as mp:
        _crash_at_forward(mp, 5)  # checkpoint at step 3: mid-epoch
        with pytest.raises(Crash):
            train(load_config(overrides=_id_sets(data[0])), run)
    cfg = load_config(run / "config.yaml", ["train.batch_size=8"])
    with pytest.raises(CheckpointError, match="batches per epoch"):
        train(cfg, run, resume=True)


def test_a_run_folder_without_its_checkpoints_starts_over_and_keeps_no_old_records(reference, tmp_path):
    """A run folder copied without checkpoints/ (kept in git, say, which leaves them out): the
    resume starts from the beginning, and the records of the lost epochs do not stay beside the
    new ones."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for name in ("checkpoints", "metrics.json", "ranks.npz"):
        p = run / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    train(load_config(run / "config.yaml"), run, resume=True)
    assert_same_run(reference, run)


def test_run_json_records_the_precision_and_a_resume_never_changes_it(data, tmp_path, monkeypatch):
    """train.amp auto is bf16 on a CPU with bf16 units and fp32 on one without: a run moved to
    another machine would go on in the other precision, its numbers from neither."""
    from adapter4rec.errors import ConfigError

    run = tmp_path / "run"
    with monkeypatch.context() as mp:
        _crash_at_forward(mp, 5)
        with pytest.raises(Crash):
            train(load_config(overrides=_id_sets(data[0])), run)
    info = json.loads((run / "run.json").read_text())
    assert info["starts"][0]["precision"] == "fp32" and info["starts"][0]["cpu"]
    info["starts"][0]["precision"] = "bf16"  # as if begun on a machine where auto meant bf16
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(ConfigError, match=r"run.json: this run began in bf16 .* set train.amp: bf16"):
        train(load_config(run / "config.yaml"), run, resume=True)
    assert not (run / "metrics.json").exists()


def test_scheduler_shapes():
    from types import SimpleNamespace

    from adapter4rec.training.optim import make_scheduler

    def lrs(kind, warm, total=10):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1.0)
        s = make_scheduler(opt, SimpleNamespace(scheduler=kind, warmup_steps=warm), total)
        out = []
        for _ in range(total):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            s.step()
        return out

    assert make_scheduler(None, SimpleNamespace(scheduler="none", warmup_steps=0), 10) is None
    lin = lrs("linear_warmup", 4)
    assert lin[:5] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert lin[5:] == pytest.approx([5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    cos = lrs("cosine", 0)
    assert cos[0] == 1.0 and cos[5] == pytest.approx(0.5) and all(a > b for a, b in zip(cos, cos[1:]))
