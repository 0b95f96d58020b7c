"""The Python API: data from DataFrames and files, saved into a run folder, trained and evaluated."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from adapter4rec.config import load_config
from adapter4rec.data.split import RecData
from adapter4rec.errors import ConfigError, DataError


def frames(n_users=40, n_items=25, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for t in range(int(rng.integers(5, 9))):
            rows.append({"user": f"u{u}", "item": f"i{rng.integers(n_items)}", "ts": int(rng.integers(10**6))})
    inter = pd.DataFrame(rows).sample(frac=1.0, random_state=seed)  # not in time order
    items = pd.DataFrame({"item": [f"i{k}" for k in range(n_items)],
                          "title": [f"guitar\tstring {k}" if k % 3 == 0 else f"drum & bass {k}"
                                    for k in range(n_items)],
                          "brand": ["acme"] * n_items})
    return inter, items


def test_from_frames_orders_by_time_and_filters_as_the_files(tmp_path):
    inter, items = frames()
    data = RecData.from_frames(inter, items, user_col="user", item_col="item", time_col="ts",
                               text_cols=["title", "brand"], min_seq_len=6, max_seq_len=4)
    # the same interactions written as files (titles without tabs: the readers split on them)
    folder = tmp_path / "files"
    folder.mkdir()
    ordered = inter.sort_values("ts", kind="stable")
    seqs = ordered.groupby("user", sort=False)["item"].apply(list)
    (folder / "users.tsv").write_text("".join(f"{u}\t{' '.join(s)}\n" for u, s in seqs.items()))
    (folder / "items.tsv").write_text("".join(f"{i}\t{t.replace(chr(9), ' ')} acme\n"
                                              for i, t in zip(items["item"], items["title"])))
    files = RecData.from_files(folder, min_seq_len=6, max_seq_len=4)
    assert data.user_ids == files.user_ids and data.item_ids == files.item_ids
    assert all(np.array_equal(a, b) for a, b in zip(data.seqs, files.seqs))
    assert all(len(s) >= 6 for s in data.seqs) and max(len(s) for s in data.seqs) <= 4 + 3
    assert "guitar\tstring 0 acme" in data.texts  # the tab of a frame's title is kept


def test_saved_data_reads_back_the_same_tabs_newlines_and_entities(tmp_path):
    inter, items = frames()
    items.loc[1, "title"] = "line\nbreak &amp; <b>"
    data = RecData.from_frames(inter, items, user_col="user", item_col="item", time_col="ts")
    back = RecData.from_files(data.save(tmp_path / "d"), max_seq_len=data.max_seq_len)
    assert back.texts == data.texts and back.item_ids == data.item_ids
    assert back.user_ids == data.user_ids
    assert all(np.array_equal(a, b) for a, b in zip(back.seqs, data.seqs))


def test_frame_errors_name_the_column_or_the_row():
    inter, items = frames()
    with pytest.raises(ConfigError, match="no column 'timestamp'"):
        RecData.from_frames(inter, items, user_col="user", item_col="item", time_col="timestamp")
    with pytest.raises(DataError, match="duplicate item id 'i0'"):
        RecData.from_frames(inter, pd.concat([items, items.iloc[:1]]), user_col="user", item_col="item")
    bad = inter.copy()
    bad.loc[bad.index[0], "item"] = "nope"
    with pytest.raises(DataError, match="'nope'"):
        RecData.from_frames(bad, items, user_col="user", item_col="item")


def test_a_run_trained_from_frames_keeps_its_data_and_evaluates_later(tmp_path):
    from adapter4rec.pipeline import evaluate_run
    from adapter4rec.training.trainer import train

    inter, items = frames()
    data = RecData.from_frames(inter, items, user_col="user", item_col="item", time_col="ts")
    cfg = load_config(overrides=["model.item_encoder=id", "model.embedding_dim=16", "train.epochs=1",
                                 "train.progress=false", "train.amp=fp32"])
    run = tmp_path / "run"
    res = train(cfg, run, data=data)
    saved = load_config(run / "config.yaml")
    assert saved.data.path == str(run / "data") and (run / "data" / "items.tsv").is_file()
    assert evaluate_run(run, "both") == {"valid": res["valid"], "test": res["test"]}
    assert json.loads((run / "run.json").read_text())["fingerprints"]["data"]


def test_callbacks_see_every_step_and_evaluation_and_can_stop(tmp_path):
    from adapter4rec.training.callbacks import Callback
    from adapter4rec.training.trainer import train

    class Recorder(Callback):
        def __init__(self):
            self.steps, self.evals, self.epochs, self.ended = [], [], [], None

        def on_step_end(self, trainer, loss):
            self.steps.append((trainer.state.global_step, loss))

        def on_eval(self, trainer, record):
            self.evals.append(record["valid"]["NDCG@10"])
            if len(self.evals) == 2:
                trainer.should_stop = True  # custom early stopping

        def on_epoch_end(self, trainer, record):
            self.epochs.append(record["epoch"])

        def on_train_end(self, trainer, final):
            self.ended = final

    inter, items = frames()
    data = RecData.from_frames(inter, items, user_col="user", item_col="item", time_col="ts")
    cfg = load_config(overrides=["model.item_encoder=id", "model.embedding_dim=16", "train.epochs=5",
                                 "train.progress=false", "train.amp=fp32", "train.batch_size=16"])
    rec = Recorder()
    res = train(cfg, tmp_path / "run", data=data, callbacks=[rec])
    steps_per_epoch = -(-data.n_users // 16)
    assert rec.epochs == [0, 1] and len(rec.evals) == 2 and rec.ended == res
    assert [s for s, _ in rec.steps] == list(range(1, 2 * steps_per_epoch + 1))
    assert all(loss is not None and loss > 0 for _, loss in rec.steps)


def test_tensorboard_is_a_config_key_with_step_loss_and_lr(tmp_path):
    pytest.importorskip("tensorboard")
    from adapter4rec.training.trainer import train

    inter, items = frames()
    data = RecData.from_frames(inter, items, user_col="user", item_col="item", time_col="ts")
    base = ["model.item_encoder=id", "model.embedding_dim=16", "train.epochs=1",
            "train.progress=false", "train.amp=fp32"]
    train(load_config(overrides=base), tmp_path / "off", data=data)
    assert not (tmp_path / "off" / "tensorboard").exists()
    train(load_config(overrides=base + ["train.tensorboard=true"]), tmp_path / "on", data=data)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "on" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/step_loss", "train/loss", "valid/NDCG@10", "test/HR@10"} <= tags
    assert any(t.startswith("lr/") for t in tags)


def test_progress_bars_only_on_a_terminal(monkeypatch):
    import io
    import sys

    from adapter4rec.runtime.logging import progress_enabled

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a redirected stderr, e.g. 2> run.log
    assert not progress_enabled(True)

    class Tty(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(sys, "stderr", Tty())
    assert progress_enabled(True) and not progress_enabled(False)


def test_metrics_for_several_cut_offs_and_a_report_of_k_20(tmp_path, capsys):
    import torch

    from adapter4rec.cli import main
    from adapter4rec.evaluation.evaluator import evaluate
    from adapter4rec.pipeline import prepare
    from adapter4rec.training.trainer import train

    inter, items = frames()
    data = RecData.from_frames(inter, items, user_col="user", item_col="item", time_col="ts")
    cfg = load_config(overrides=["model.item_encoder=id", "model.embedding_dim=16", "train.epochs=1",
                                 "train.progress=false", "train.amp=fp32", "eval.k=20"])
    _, model, content, _ = prepare(cfg, data)
    both = evaluate(model, content, data, torch.device("cpu"), k=(10, 20))
    one = evaluate(model, content, data, torch.device("cpu"), k=20)
    assert set(both["test"]) == {"HR@10", "NDCG@10", "HR@20", "NDCG@20"}
    assert both["test"]["HR@20"] == one["test"]["HR@20"] >= both["test"]["HR@10"]
    train(cfg, tmp_path / "run", data=data)
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "test_NDCG@20" in out and "nan" not in out


def test_the_python_api_from_frames_to_metrics_and_recommendations(tiny_bert, tmp_path):
    import torch

    import adapter4rec as a4r

    inter, items = frames()
    data = a4r.RecData.from_frames(inter, items, user_col="user", item_col="item", time_col="ts",
                                   text_cols=["title"])
    cfg = a4r.load_config(overrides=[f"model.pretrained={tiny_bert}", "model.embedding_dim=16",
                                     "train.epochs=2", "train.progress=false", "train.amp=fp32",
                                     "data.max_title_len=12"])
    model = a4r.build_model(cfg, data)
    assert model.content is not None and model.item_ids == data.item_ids
    a4r.peft.apply(model, "houlsby")
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    result = a4r.train(cfg, tmp_path / "run", data=data, model=model)
    assert result.model is model  # the model passed in is the one trained
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    assert result["test"] == result.metrics["test"] and result.run_dir == tmp_path / "run"
    # the returned model is at its best epoch: evaluating it gives the reported numbers
    got = a4r.evaluate(result.model, data, split=("valid", "test"))
    assert got == {"valid": result["valid"], "test": result["test"]}
    k20 = a4r.evaluate(result.model, data, k=(10, 20))
    assert k20["HR@20"] >= k20["HR@10"] == result["test"]["HR@10"]
    # recommendations: k items, best first, the history left out
    history = [data.item_ids[j - 1] for j in data.seqs[0][:-1]]
    recs = a4r.recommend(result.model, [history, history[:2]], k=5)
    assert [len(r) for r in recs] == [5, 5]
    assert not set(history) & {i for i, _ in recs[0]}
    assert all(a[1] >= b[1] for a, b in zip(recs[0], recs[0][1:]))
    # later, from the run folder alone: the recorded metrics
    again, data2, cfg2 = a4r.load_run(tmp_path / "run")
    assert cfg2.peft.method == "houlsby" and data2.item_ids == data.item_ids
    assert a4r.evaluate(again, data2, split=("valid", "test")) == got


def test_train_without_a_model_returns_the_best_model(tmp_path):
    import adapter4rec as a4r

    inter, items = frames()
    data = a4r.RecData.from_frames(inter, items, user_col="user", item_col="item", time_col="ts")
    cfg = a4r.load_config(overrides=["model.item_encoder=id", "model.embedding_dim=16",
                                     "train.epochs=2", "train.progress=false", "train.amp=fp32"])
    result = a4r.train(cfg, tmp_path / "run", data=data)
    assert a4r.evaluate(result.model, data, split=("valid", "test")) == {
        "valid": result["valid"], "test": result["test"]}
    assert sorted(a4r.__all__) == a4r.__all__ and "recommend" in dir(a4r)
