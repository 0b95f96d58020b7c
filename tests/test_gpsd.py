"""GPSD (docs/gpsd.md): the block, the objectives, the AUC evaluation, the transfer strategies and
the item side features, on small synthetic ID data."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from adapter4rec.config import load_config
from adapter4rec.encoders.gpsd import GPSD, RMSNorm, apply_rope, rope, swiglu_hidden
from adapter4rec.errors import CheckpointError, ConfigError, DataError
from adapter4rec.evaluation.auc import sample_negatives
from adapter4rec.objectives import sampled_softmax
from adapter4rec.pipeline import load_data, prepare
from adapter4rec.runtime.io import load_weights
from adapter4rec.training.trainer import Trainer

N_ITEMS = 60


def _write_chain(folder, n_users=600, seed=0, features=False):
    """Items in 6 clusters of 10; a user stays in one cluster and mostly steps to its next item
    (i -> i + 1 within the cluster): next-item prediction is learnable, a popularity ranking
    (nearly uniform here) is not good at it, and a candidate of the history's cluster is likely
    the next item (what the discriminative model can learn from few samples)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.tsv").write_text("".join(f"I{i}\ttitle {i}\n" for i in range(1, N_ITEMS + 1)))
    lines = []
    for u in range(n_users):
        cluster, k = int(rng.integers(6)), int(rng.integers(10))
        seq = []
        for _ in range(int(rng.integers(8, 13))):
            seq.append(cluster * 10 + k + 1)
            k = (k + 1) % 10 if rng.random() < 0.85 else int(rng.integers(10))
        lines.append(f"U{u}\t{' '.join(f'I{i}' for i in seq)}\n")
    (folder / "users.tsv").write_text("".join(lines))
    if features:
        (folder / "features.tsv").write_text(
            "".join(f"I{i}\tcate={i % 5} brand={i % 3}\n" for i in range(1, N_ITEMS + 1, 2)))
    return folder


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    return _write_chain(tmp_path_factory.mktemp("gpsd_chain"), features=True)


def _sets(data, *extra, d=16, blocks=1):
    return [f"data.path={data}", "data.max_seq_len=8", "model.item_encoder=id", "model.block=gpsd",
            f"model.embedding_dim={d}", f"model.num_blocks={blocks}", "model.num_heads=2",
            "model.dropout=0.0", "train.progress=false", "train.amp=fp32", "train.batch_size=32",
            "train.optimizer=adamw", "train.weight_decay=0.1", "train.decay_embeddings=true",
            "eval.auc_negatives=20", *extra]


def _generative(data, *extra, **kw):
    return load_config(overrides=_sets(data, "train.objective=sampled_softmax",
                                       "train.num_negatives=16", "train.negatives_per=sequence",
                                       "train.temperature=0.05", "train.lr=5e-3", *extra, **kw))


def _discriminative(data, *extra):
    return load_config(overrides=_sets(data, "train.objective=discriminative", "eval.metric=auc",
                                       "train.lr=5e-3", *extra))


def _train(cfg, out):
    trainer = Trainer(cfg, out)
    try:
        trainer.setup()
        final = trainer.train()
    finally:
        trainer.cleanup()
    return trainer, final


@pytest.fixture(scope="module")
def source(chain, tmp_path_factory):
    """A generative run (2 epochs) to transfer from."""
    out = tmp_path_factory.mktemp("gpsd_source")
    _train(_generative(chain, "train.epochs=2"), out)
    return out


# ------------------------------------------------------------------------------------ the block

def test_block_is_causal():
    torch.manual_seed(0)
    enc = GPSD(d=16, blocks=2, heads=2).eval()
    x, mask = torch.randn(2, 6, 16), torch.ones(2, 6, dtype=torch.bool)
    base = enc(x, mask)
    for j in range(6):
        y = x.clone()
        y[:, j] += 1.0
        out = enc(y, mask)
        assert torch.allclose(out[:, :j], base[:, :j], atol=1e-6), f"a position before {j} sees it"
        assert not torch.allclose(out[:, j], base[:, j], atol=1e-4)
    # candidates: the history never sees one, and no candidate sees another
    c = torch.randn(2, 3, 16)
    got = enc(x, mask, candidates=c)
    assert torch.allclose(got[:, :6], base, atol=1e-6)
    c2 = c.clone()
    c2[:, 1] += 1.0
    got2 = enc(x, mask, candidates=c2)
    assert torch.allclose(got2[:, [6, 8]], got[:, [6, 8]], atol=1e-6)
    assert not torch.allclose(got2[:, 7], got[:, 7], atol=1e-4)
    # a candidate scored alone is the same as among others (gpsd-rec: one pass per candidate)
    alone = enc(x, mask, candidates=c[:, 2:3])
    assert torch.allclose(alone[:, 6], got[:, 8], atol=1e-5)


def test_block_is_padding_invariant_without_nan():
    torch.manual_seed(0)
    enc = GPSD(d=16, blocks=2, heads=2).eval()
    x = torch.randn(1, 4, 16)
    short = enc(x, torch.ones(1, 4, dtype=torch.bool), candidates=x[:, :2])
    for pad in (1, 5):
        padded = torch.cat([torch.randn(1, pad, 16) * 100, x], 1)  # junk in the padded slots
        mask = torch.cat([torch.zeros(1, pad, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool)], 1)
        out = enc(padded, mask, candidates=x[:, :2])
        assert torch.isfinite(out).all()
        assert torch.allclose(out[:, pad:], short, atol=1e-4), f"{pad} padding slots change the states"
    empty = enc(torch.zeros(2, 5, 16), torch.zeros(2, 5, dtype=torch.bool), candidates=x[:, :1].expand(2, 1, 16))
    assert torch.isfinite(empty).all()  # a history of padding only: still no NaN
    # and gradients through a left-padded batch stay finite
    x.requires_grad_(True)
    padded = torch.cat([torch.zeros(1, 3, 16), x], 1)
    enc(padded, padded.abs().sum(-1) > 0).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_block_parts_follow_gpsd_rec():
    assert swiglu_hidden(64) == 192 and swiglu_hidden(16) == 64  # int(2 * 4d / 3) -> multiple of 32
    enc = GPSD(d=64, blocks=1, heads=4)
    assert enc.blocks[0].ffn.fc1.out_features == 192 and enc.blocks[0].ln_attn.eps == 1e-5
    assert all(m.bias is None for n, m in enc.named_modules() if isinstance(m, torch.nn.Linear))
    x = torch.randn(3, 8)
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    assert torch.allclose(RMSNorm(8)(x), ref, atol=1e-6)
    # RoPE: q.k depends on the positions' difference only, and rotates interleaved pairs
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i, j):
        (cq, sq), (ck, sk) = rope(torch.tensor([i]), 8), rope(torch.tensor([j]), 8)
        return float((apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum())
    assert math.isclose(score(3, 1), score(7, 5), rel_tol=1e-5)
    assert not math.isclose(score(3, 1), score(3, 2), rel_tol=1e-3)
    cos, sin = rope(torch.tensor([1]), 8)
    z = torch.zeros(1, 1, 1, 8)
    z[..., 0] = 1.0  # pair (x0, x1) = (1, 0) turns by the first frequency (1 rad at position 1)
    assert torch.allclose(apply_rope(z, cos, sin)[..., :2].flatten(), torch.tensor([math.cos(1), math.sin(1)]))


# ------------------------------------------------------------------------------------ objectives

def test_sampled_softmax_per_sequence_negatives_and_temperature():
    torch.manual_seed(0)
    h, items = torch.randn(2, 3, 4), torch.randn(6, 4)
    items[0] = 0
    tgt = torch.tensor([[0, 1, 2], [3, 4, 0]])
    neg = torch.tensor([[2, 5], [1, 3]])  # sequence 0's 2 is a hit at its position 2; seq 1's 3 too
    got = sampled_softmax(h, items, tgt, neg, None, None, temperature=0.5)
    hn, itn = torch.nn.functional.normalize(h, dim=-1), torch.nn.functional.normalize(items, dim=-1)
    losses = []
    for b, l in [(0, 1), (0, 2), (1, 0), (1, 1)]:
        t = int(tgt[b, l])
        negs = [int(n) for n in neg[b] if int(n) != t]  # a hit is masked out
        logits = torch.stack([hn[b, l] @ itn[t]] + [hn[b, l] @ itn[n] for n in negs]) / 0.5
        losses.append(-torch.log_softmax(logits, 0)[0])
    assert torch.allclose(got, torch.stack(losses).mean(), atol=1e-5)
    # temperature 0: plain dot products, as before
    dot = sampled_softmax(h, items, tgt, neg[0], None, None)
    b_idx, l_idx = (tgt > 0).nonzero(as_tuple=True)
    hv, t = h[b_idx, l_idx], tgt[b_idx, l_idx]
    logits = torch.cat([(hv * items[t]).sum(-1, keepdim=True), hv @ items[neg[0]].T], 1)
    logits[:, 1:] = logits[:, 1:].masked_fill(neg[0][None] == t[:, None], -1e4)
    assert torch.allclose(dot, torch.nn.functional.cross_entropy(logits, torch.zeros(len(t), dtype=torch.long)))


def test_generative_pretraining_learns_and_beats_popularity(chain, source):
    records = [json.loads(line) for line in (source / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train_loss"] < records[0]["train_loss"] - 0.3
    data = load_data(_generative(chain))
    counts = data.item_counts()
    hits = 0
    for u in range(data.n_users):  # popularity: the 10 most frequent items not in the history
        hist = set(data.history(u, "test").tolist())
        top = [i for i in np.argsort(-counts[1:], kind="stable") + 1 if i not in hist][:10]
        hits += data.target(u, "test") in top
    final = json.loads((source / "metrics.json").read_text())
    assert final["test"]["HR@10"] > 2 * hits / data.n_users + 0.1


def test_discriminative_auc_well_above_chance(chain, tmp_path):
    trainer, final = _train(_discriminative(chain, "train.epochs=6", "train.transfer=NT",
                                            "eval.auc_users=300"), tmp_path)
    assert final["test"]["AUC"] > 0.7, final["test"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for r in records:  # per epoch: train / valid / test AUC and loss, for the generalisation gap
        assert {"AUC", "loss"} <= set(r["train"]) and {"AUC", "loss"} <= set(r["test"])
    assert "HR@10" not in final["test"]  # a head on the candidate ranks no full catalogue
    assert final["transfer"]["strategy"] == "NT" and final["transfer"]["transferred"] == []


def test_auc_negatives_fixed_per_user_and_unseen(chain):
    data = load_data(_generative(chain))
    a = sample_negatives(data, 3, "test", 20, seed=0)
    assert np.array_equal(a, sample_negatives(data, 3, "test", 20, seed=0))
    assert not np.array_equal(a, sample_negatives(data, 4, "test", 20, seed=0))
    assert len(set(a.tolist())) == 20 and not set(a.tolist()) & set(data.seqs[3].tolist())
    with pytest.raises(ConfigError, match="eval.auc_negatives"):
        sample_negatives(data, 3, "test", N_ITEMS, seed=0)


# ----------------------------------------------------------------------------- transfer strategies

DENSE_FROM_SOURCE = ["user_encoder.blocks.0.attn.key.weight", "user_encoder.blocks.0.attn.out.weight",
                     "user_encoder.blocks.0.attn.query.weight", "user_encoder.blocks.0.attn.value.weight",
                     "user_encoder.blocks.0.ffn.fc1.weight", "user_encoder.blocks.0.ffn.fc2.weight",
                     "user_encoder.blocks.0.ffn.fc3.weight", "user_encoder.blocks.0.ln_attn.weight",
                     "user_encoder.blocks.0.ln_ffn.weight", "user_encoder.ln_out.weight",
                     "user_encoder.segment.weight"]
TABLE = "item_encoder.table.weight"
EXPECTED = {  # strategy: (transferred, frozen)
    "NT": ([], []),
    "FT": (sorted([TABLE] + DENSE_FROM_SOURCE), []),
    "ST": ([TABLE], []),
    "FT&SF": (sorted([TABLE] + DENSE_FROM_SOURCE), [TABLE]),
    "ST&SF": ([TABLE], [TABLE]),
}


@pytest.mark.parametrize("strategy", list(EXPECTED))
def test_strategy_transfers_and_freezes_exactly(chain, source, strategy):
    init = [] if strategy == "NT" else [f"train.init_from={source}"]
    cfg = _discriminative(chain, f"train.transfer={strategy}", *init)
    _, model, _, summary = prepare(cfg)
    transferred, frozen = EXPECTED[strategy]
    assert summary["transfer"]["transferred"] == transferred
    assert summary["transfer"]["frozen"] == frozen
    assert sorted(n for n, p in model.named_parameters() if not p.requires_grad) == frozen
    src = load_weights(source / "checkpoints" / "best")
    own = dict(model.named_parameters())
    for name in src:  # transferred: the source's values; the others: as built here
        same = torch.equal(own[name].detach(), src[name])
        assert same == (name in transferred), name
    assert {n for n in own if n.startswith("head.")} and not any(n.startswith("head.") for n in src)
    t = summary["transfer"]
    assert t["sparse_params"] == own[TABLE].numel()
    assert t["dense_params"] == sum(p.numel() for n, p in own.items() if n != TABLE)


def test_frozen_embeddings_unchanged_after_training(chain, source, tmp_path):
    cfg = _discriminative(chain, "train.transfer=ST&SF", f"train.init_from={source}",
                          "train.epochs=1", "train.lr=1e-2")
    trainer, final = _train(cfg, tmp_path)
    src = load_weights(source / "checkpoints" / "best")
    model = trainer.model
    assert trainer.state.global_step > 0
    # weight decay 0.1 on embeddings (decay_embeddings) would move the table if it were trained
    assert torch.equal(model.item_encoder.table.weight.detach(), src[TABLE])
    assert not torch.equal(model.user_encoder.blocks[0].attn.query.weight.detach(),
                           src["user_encoder.blocks.0.attn.query.weight"])
    assert final["transfer"]["frozen"] == [TABLE]
    assert final["transfer"]["transferred"] == [TABLE]


def test_transfer_refuses_other_data_and_bad_combinations(chain, source, tmp_path):
    other = _write_chain(tmp_path / "other", n_users=200, seed=1)
    with pytest.raises(CheckpointError, match="other data"):
        prepare(_discriminative(other, "train.transfer=ST", f"train.init_from={source}"))
    with pytest.raises(ConfigError, match="train.transfer"):
        _discriminative(chain, "train.transfer=FT")  # no init_from
    with pytest.raises(ConfigError, match="NT"):
        _discriminative(chain, "train.transfer=NT", f"train.init_from={source}")
    with pytest.raises(ConfigError, match="train.transfer"):
        _discriminative(chain, "train.transfer=XT")
    with pytest.raises(ConfigError, match="model.block"):
        _discriminative(chain, "model.block=sasrec")
    with pytest.raises(ConfigError, match="eval.metric"):
        _discriminative(chain, "eval.metric=ndcg")
    with pytest.raises(ConfigError, match="tie_embeddings"):
        load_config(overrides=["model.tie_embeddings=false", "model.pretrained=x"])


def test_untied_output_table_is_sparse_and_used(chain, tmp_path):
    cfg = _generative(chain, "model.tie_embeddings=false", "train.epochs=1")
    trainer, final = _train(cfg, tmp_path / "gen")
    model = trainer.model
    assert model.item_output is not None and final["test"]["HR@10"] >= 0
    items = torch.randn(N_ITEMS + 1, 16)
    assert torch.allclose(model.target_matrix(items),
                          torch.nn.functional.normalize(model.item_output.weight, dim=-1, eps=1e-6))
    cfg = _discriminative(chain, "model.tie_embeddings=false", "train.transfer=ST&SF",
                          f"train.init_from={tmp_path / 'gen'}")
    _, _, _, summary = prepare(cfg)
    both = ["item_encoder.table.weight", "item_output.weight"]
    assert summary["transfer"]["transferred"] == both and summary["transfer"]["frozen"] == both


# --------------------------------------------------------------------------------- side features

def test_item_features_are_summed_into_id_embeddings(chain):
    cfg = _generative(chain, "data.item_features=features.tsv")
    data, model, content, _ = prepare(cfg)
    enc = model.item_encoder
    assert enc.features.num_embeddings == 5 + 3 + 1  # cate=0..4, brand=0..2, padding
    got = content.get(np.array([1, 2]))  # I1 has features, I2 none
    assert got["features"][1].eq(0).all() and got["features"][0].gt(0).all()
    vec = enc.encode(got)
    assert torch.allclose(vec[1], enc.table.weight[2])
    assert torch.allclose(vec[0], enc.table.weight[1] + enc.features(got["features"][0]).sum(0))


def test_item_features_errors_name_file_and_line(chain, tmp_path):
    bad = tmp_path / "data"
    bad.mkdir()
    for f in ("users.tsv", "items.tsv"):
        (bad / f).write_text((chain / f).read_text())
    (bad / "feat.tsv").write_text("I1\tcate=1\nI2 cate=2\n")
    with pytest.raises(DataError, match=r"feat.tsv:2: no tab"):
        prepare(_generative(bad, "data.item_features=feat.tsv"))
    (bad / "feat.tsv").write_text("I1\tcate=1\nI1\tcate=2\n")
    with pytest.raises(DataError, match=r"feat.tsv:2: duplicate item id"):
        prepare(_generative(bad, "data.item_features=feat.tsv"))
    with pytest.raises(ConfigError, match="data.item_features"):
        prepare(_generative(bad, "data.item_features=missing.tsv"))


def test_item_features_file_is_part_of_the_run_fingerprint(chain, tmp_path):
    """A resume or evaluation over changed side features is refused like changed data."""
    from adapter4rec.pipeline import build_run

    data = tmp_path / "data"
    data.mkdir()
    for f in ("users.tsv", "items.tsv", "features.tsv"):
        (data / f).write_text((chain / f).read_text())
    cfg = _generative(data, "data.item_features=features.tsv")
    before = build_run(cfg).fingerprints()
    assert "item_features" in before
    (data / "features.tsv").write_text((chain / "features.tsv").read_text().replace("brand=1", "brand=2"))
    after = build_run(cfg).fingerprints()
    assert after["item_features"] != before["item_features"] and after["data"] == before["data"]
    assert "item_features" not in build_run(_generative(data)).fingerprints()


def test_recommend_with_the_gpsd_block_and_refused_for_the_discriminative_model(chain, source):
    from adapter4rec.api import load_run, recommend

    model, data, _ = load_run(source)  # the generative GPSD run: user vectors, RoPE, no position table
    top = recommend(model, [data.item_ids[:3]], k=5)
    assert len(top[0]) == 5 and not set(i for i, _ in top[0]) & set(data.item_ids[:3])
    cfg = _discriminative(chain)
    _, disc, _, _ = prepare(cfg)
    with pytest.raises(ConfigError, match="discriminative model"):
        recommend(disc, [data.item_ids[:3]], k=5)
