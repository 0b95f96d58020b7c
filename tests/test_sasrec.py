"""The user encoder is the reference's SASRec (westlake-repl/Adapter4Rec ``modules.py``); 0.1's
block with biases stays as ``model.block: sasrec_bias``, and its checkpoints never load into the
reference block."""
import pytest
import torch
from torch import nn

from adapter4rec.config import load_config
from adapter4rec.encoders.sasrec import SASRec
from adapter4rec.errors import CheckpointError, ConfigError
from adapter4rec.pipeline import evaluate_run, prepare
from adapter4rec.runtime.io import load_weights
from adapter4rec.training.trainer import train

from conftest import overrides

D, L, B, H = 64, 10, 2, 2   # the study's user encoder: d = 64, max_seq_len 10, 2 blocks, 2 heads


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_default_has_the_reference_parameter_count():
    # counted by hand from the reference's TransformerEncoder (Pretraining/Text/model/modules.py)
    per_block = (4 * D * D            # w_Q, w_K, w_V, fc: Linear(d, d, bias=False)
                 + 2 * D              # MultiHeadedAttention.layer_norm
                 + D * 4 * D + 4 * D  # PositionwiseFeedForward.w_1: Linear(d, 4d) with bias
                 + 4 * D * D + D      # w_2: Linear(4d, d) with bias
                 + 2 * D)             # PositionwiseFeedForward.layer_norm
    reference = (L * D                # position_embedding: Embedding(max_seq_len, d)
                 + 2 * D              # the input layer_norm
                 + B * per_block)
    assert reference == 100_224
    assert n_params(SASRec(D, L, B, H, 0.1)) == reference


def test_default_attention_projections_have_no_bias():
    enc = SASRec(D, L, B, H, 0.1)
    for blk in enc.blocks:
        for proj in (blk.attn.query, blk.attn.key, blk.attn.value, blk.attn.out):
            assert proj.bias is None
        assert blk.ffn.fc1.bias is not None and blk.ffn.fc2.bias is not None  # as the reference
    assert not any(n.startswith("blocks.") and ".attn." in n and n.endswith(".bias")
                   for n, _ in enc.named_parameters())


def test_one_dropout_per_residual_branch():
    enc = SASRec(D, L, B, H, 0.1)
    for blk in enc.blocks:
        assert not any(isinstance(m, nn.Dropout) for m in blk.ffn.modules())  # none inside the FFN
        assert isinstance(blk.attn_drop, nn.Dropout) and isinstance(blk.ffn_drop, nn.Dropout)
        assert blk.attn_drop is not blk.ffn_drop
    # the input dropout + one per residual branch (attention probabilities: SDPA's dropout_p)
    assert sum(isinstance(m, nn.Dropout) for m in enc.modules()) == 1 + 2 * B
    calls = []  # a hook on a branch's dropout fires once per block per forward
    for i, blk in enumerate(enc.blocks):
        for name in ("attn_drop", "ffn_drop"):
            getattr(blk, name).register_forward_hook(lambda *_, k=(i, name): calls.append(k))
    enc(torch.randn(2, L, D), torch.ones(2, L, dtype=torch.bool))
    assert sorted(calls) == sorted((i, n) for i in range(B) for n in ("attn_drop", "ffn_drop"))


def test_sasrec_bias_keeps_0_1_names_and_count():
    enc = SASRec(D, L, B, H, 0.1, block="sasrec_bias")
    per_block = [f"attn.{p}.{t}" for p in ("query", "key", "value", "out") for t in ("weight", "bias")]
    per_block += [f"ffn.{p}.{t}" for p in ("fc1", "fc2") for t in ("weight", "bias")]
    per_block += [f"{ln}.{t}" for ln in ("ln_attn", "ln_ffn") for t in ("weight", "bias")]
    names = ["pos.weight", "ln_in.weight", "ln_in.bias"]
    names += [f"blocks.{i}.{n}" for i in range(B) for n in per_block]
    assert [n for n, _ in enc.named_parameters()] == names
    per_block_count = (4 * (D * D + D)     # query, key, value, out: Linear(d, d) with bias
                       + D * 4 * D + 4 * D  # ffn.fc1
                       + 4 * D * D + D      # ffn.fc2
                       + 2 * 2 * D)         # ln_attn, ln_ffn
    assert n_params(enc) == L * D + 2 * D + B * per_block_count == 100_736
    for blk in enc.blocks:  # 0.1's second dropout, on the FFN's hidden ReLU
        assert isinstance(blk.ffn.drop, nn.Dropout)


@pytest.mark.parametrize("block", ["sasrec", "sasrec_bias"])
@pytest.mark.parametrize("training", [False, True])
def test_outputs_are_finite_with_left_padding(block, training):
    torch.manual_seed(0)
    enc = SASRec(D, L, B, H, 0.1, block=block).train(training)
    mask = torch.ones(3, L, dtype=torch.bool)
    mask[0, :6] = False   # left padded
    mask[1] = False       # fully padded: no visible key anywhere
    out = enc(torch.randn(3, L, D), mask)
    assert out.shape == (3, L, D) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters())


def test_unknown_block_is_refused():
    with pytest.raises(ConfigError, match="model.block"):
        load_config(overrides=["model.block=transformer"])
    with pytest.raises(ConfigError, match="model.block"):
        SASRec(block="transformer")


@pytest.fixture(scope="module")
def tiny_domains(tmp_path_factory):
    from adapter4rec.data.synthetic import make_transfer_pair

    return make_transfer_pair(tmp_path_factory.mktemp("sasrec"), seed=0, source_users=60,
                              source_items=40, target_users=50, target_items=30, max_len=10)


def quick(data, **kw):
    return overrides(data, train__epochs=1, train__batch_size=16, train__max_steps_per_epoch=2,
                     train__patience=1, **kw)


def test_source_checkpoint_of_the_other_block_is_refused(tiny_domains, tmp_path):
    source, target = tiny_domains
    old = tmp_path / "old"  # a source pretrained with 0.1's block
    train(load_config(overrides=quick(source, model__block="sasrec_bias")), old)
    assert "user_encoder.blocks.0.attn.query.bias" in load_weights(old / "checkpoints" / "best")

    with pytest.raises(CheckpointError, match="model.block: sasrec_bias") as e:
        prepare(load_config(overrides=quick(target, train__init_from=str(old))))
    assert "\n" not in str(e.value) and "0.1" in str(e.value)
    # with the block it was made with, it loads
    _, model, _, _ = prepare(load_config(overrides=quick(target, train__init_from=str(old),
                                                         model__block="sasrec_bias")))
    saved = load_weights(old / "checkpoints" / "best")
    own = dict(model.named_parameters())
    assert all(torch.equal(own[k].detach(), v) for k, v in saved.items() if k.startswith("user_"))
    # evaluating it as a run made before model.block existed (read as the default) is refused too
    with pytest.raises(CheckpointError, match="model.block: sasrec_bias"):
        evaluate_run(old, overrides=["model.block=sasrec"])

    new = tmp_path / "new"  # and the other way round: a reference-block source into sasrec_bias
    train(load_config(overrides=quick(source)), new)
    with pytest.raises(CheckpointError, match="model.block: sasrec\\b"):
        prepare(load_config(overrides=quick(target, train__init_from=str(new),
                                            model__block="sasrec_bias")))
