"""The faster paths compute the same thing as the slow ones (nothing here is timed)."""
import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from adapter4rec.config import load_config
from adapter4rec.data.batching import TrainBatches
from adapter4rec.encoders.backbone import lowest_trainable_layer
from adapter4rec.evaluation import evaluator
from adapter4rec.evaluation.metrics import target_ranks
from adapter4rec.pipeline import prepare
from adapter4rec.runtime.precision import amp_dtype
from adapter4rec.runtime.seed import seed_everything

from conftest import overrides

ROOT = Path(__file__).resolve().parents[1]


def grads_of(model, batch, no_grad_below: bool) -> dict:
    model.item_encoder.no_grad_below = no_grad_below
    model.zero_grad(set_to_none=True)
    model(batch).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method,options,lowest", [
    ("lora", {"layers": [1]}, 1),
    ("houlsby", {"layers": {"item": [1], "user": "all"}}, 1),
    ("houlsby", {}, 0),
    ("frozen", {}, None),
])
def test_frozen_prefix_without_autograd_gives_the_same_gradients(domains, tiny_bert, method, options, lowest):
    # cache.prefix off: the backbone's own layers run the prefix (with the cache they never run)
    sets = overrides(domains[0], tiny_bert, peft__method=method, train__objective="bce",
                     cache__prefix="off")
    cfg = load_config(overrides=sets)
    cfg.peft.options.update(options)
    seed_everything(0)
    data, model, content, _ = prepare(cfg)
    model.eval()  # no dropout: the two passes must agree exactly
    backbone = model.item_encoder.backbone
    assert lowest_trainable_layer(backbone)[0] == lowest
    batch = TrainBatches(data, content, 16, "bce", seed=1)[0]
    seen = []
    hook = backbone.encoder.layer[0].register_forward_hook(lambda m, a, out: seen.append(out.requires_grad))
    try:
        with_prefix = grads_of(model, batch, True)
        without = grads_of(model, batch, False)
    finally:
        hook.remove()
    assert with_prefix.keys() == without.keys() and with_prefix
    for n in with_prefix:
        assert torch.equal(with_prefix[n], without[n]), n
    # with the prefix off, layer 0's output needs no graph unless layer 0 itself trains
    assert seen[0] is (lowest == 0)
    assert torch.is_grad_enabled()


def test_amp_auto_follows_the_cpu(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="adapter4rec")
    cpu = torch.device("cpu")
    cfg = load_config(overrides=["model.item_encoder=id"])
    monkeypatch.setenv("ADAPTER4REC_CPU_BF16", "1")
    assert amp_dtype(cfg.train.amp, cpu) == torch.bfloat16
    monkeypatch.setenv("ADAPTER4REC_CPU_BF16", "0")
    assert amp_dtype(cfg.train.amp, cpu) is None
    assert "train.amp auto: bf16" in caplog.text and "train.amp auto: fp32" in caplog.text
    cfg = load_config(overrides=["model.item_encoder=id", "train.amp=fp32"])
    monkeypatch.setenv("ADAPTER4REC_CPU_BF16", "1")
    assert amp_dtype(cfg.train.amp, cpu) is None


def test_chunk_ranks_equal_dense_ranks():
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    for _ in range(30):
        C, N = 9, 25
        scores = torch.randint(0, 4, (C, N + 1), generator=g).float()  # many ties
        tgt = torch.randint(1, N + 1, (C,), generator=g)
        hist = [rng.integers(1, N + 1, size=rng.integers(0, 7)) for _ in range(C)]  # duplicates too
        mask = torch.zeros(C, N + 1, dtype=torch.bool)
        excl = np.zeros((C, 7), dtype=np.int64)
        for b, h in enumerate(hist):
            mask[b, torch.from_numpy(h)] = True
            u = np.unique(h)
            excl[b, :len(u)] = u
        assert torch.equal(target_ranks(scores, tgt, mask), evaluator.chunk_ranks(scores, tgt, torch.from_numpy(excl)))
        assert torch.equal(target_ranks(scores, tgt), evaluator.chunk_ranks(scores, tgt))


def test_user_chunks_bounded_by_the_score_budget(domains, monkeypatch):
    cfg = load_config(overrides=overrides(domains[0]))
    seed_everything(0)
    data, model, content, _ = prepare(cfg)
    model.eval()
    items = evaluator.encode_all_items(model, content, torch.device("cpu"))
    full = evaluator.rank_users(model, items, data, "test", torch.device("cpu"))
    monkeypatch.setattr(evaluator, "SCORE_BUDGET", 3 * len(items))  # 3 users per chunk
    small = evaluator.rank_users(model, items, data, "test", torch.device("cpu"))
    assert torch.equal(full, small)
    # and the dense reference computation
    hist = [data.history(u, "test") for u in range(data.n_users)]
    tgt = torch.tensor([data.target(u, "test") for u in range(data.n_users)])
    from adapter4rec.data.batching import left_pad
    h = torch.from_numpy(np.stack([left_pad(x, data.max_seq_len) for x in hist]))
    with torch.no_grad():
        scores = model.user_vectors(items[h], h > 0) @ items.T
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    for u, x in enumerate(hist):
        mask[u, torch.from_numpy(x)] = True
    assert torch.equal(full, target_ranks(scores, tgt, mask))


def test_reference_mode_computes_the_same_loss(domains, tiny_bert):
    """benchmarks/train_step.py's reference mode (every slot, full title width) is the same BCE as
    the library's path (distinct items, trimmed titles): only slower."""
    spec = importlib.util.spec_from_file_location("train_step", ROOT / "benchmarks" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = load_config(overrides=overrides(domains[0], tiny_bert, peft__method="houlsby", train__objective="bce"))
    seed_everything(0)
    data, model, content, _ = prepare(cfg)
    model.eval()
    batch = TrainBatches(data, content, 16, "bce", seed=2)[0]
    ours = model(batch)
    ref = bench.reference_loss(model, batch, content.tokens, content.pad_id)
    assert torch.allclose(ours, ref, atol=1e-5), (ours, ref)
