"""Each PEFT method computes its paper's (and AdapterHub's) formula, and trains what it should.

The hosts are tiny random-weight models (BERT, ViT, SASRec) in float64; every adapter weight (and
every LayerNorm of the host) is random and non-zero. Each test runs the *unmodified* host step by
step by hand -- its embeddings module, then for each layer the attention and FFN written out from
the host's own weights -- with the method's formula written out at each sublayer, and compares
the result with the adapted model's output to 1e-6.

With ``f(z) = s * up(act(down(z)))``, ``h`` a sublayer's output after the host's residual-branch
dropout, ``x`` its residual branch, ``x_sub`` what the sublayer reads (post-LN: ``x``) and ``LN``
the host LayerNorm after the residual add (identity in pre-LN ViT), AdapterHub
(adapter-hub/adapters 88f18eb, ``methods/modeling.py`` ``Adapter.pre_forward / forward /
post_forward``, ``ParallelAdapter``; configs in ``configuration/adapter_config.py``) computes:

    double_seq_bn (Houlsby):   LN(x + h + f(h))
    seq_bn (Pfeiffer):         LN(x + h + f(LN(x + h)))      residual_before_ln: the skip is h
    par_bn (He et al.):        LN(x + h + f(x_sub))

The trainable-set tests count by hand: adapters, plus the LayerNorms of the chosen layers
(``tune_layernorm``, default true for the bottleneck adapters and Compacter, false for LoRA and
prompt tuning).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adapter4rec import peft
from adapter4rec.encoders.sasrec import SASRec
from adapter4rec.encoders.text import TextItemEncoder
from adapter4rec.model import Recommender

H, I, L, HEADS = 16, 32, 2, 2     # BERT / ViT width, FFN width, layers, heads
D, B, S = 8, 2, 5                 # SASRec width, blocks, sequence length
NEG = -1e9                        # finite mask value, as SASRec
SCALING = 2.5                     # a parallel scaling that is not 1
LORA_SCALE = 8.0 / 4              # item_alpha / item_rank of the LoRA test


# ------------------------------------------------------------------------------------ hosts

def bert_backbone():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=50, hidden_size=H, num_hidden_layers=L,
                                num_attention_heads=HEADS, intermediate_size=I,
                                max_position_embeddings=20, type_vocab_size=2, pad_token_id=0,
                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                     add_pooling_layer=False)


def vit_backbone():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    return ViTModel(ViTConfig(hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS,
                              intermediate_size=I, image_size=32, patch_size=16,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                    add_pooling_layer=False)


def recommender(item="bert") -> Recommender:
    if item == "bert":
        enc = TextItemEncoder(bert_backbone(), D)
    else:
        from adapter4rec.encoders.image import ImageItemEncoder

        enc = ImageItemEncoder(vit_backbone(), D)
    torch.manual_seed(1)
    return Recommender(enc, SASRec(D, S, B, 2, 0.0), "bce").eval()


def adapted(method, item="bert", **options) -> Recommender:
    """The method applied, then every inserted parameter and every host LayerNorm randomised
    (non-zero), in float64."""
    model = recommender(item)
    peft.apply(model, method, **options)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "peft_" in n or "lora_" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif "LayerNorm" in n or "layernorm" in n or ".ln_" in n:
                base = 1.0 if n.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
    return model.double()


def text_inputs():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 50, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1:, 5:] = 0
    return ids * mask, mask


def pixels():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


def user_inputs():
    g = torch.Generator().manual_seed(6)
    seq = torch.randn(3, S, D, generator=g, dtype=torch.float64)
    mask = torch.ones(3, S, dtype=torch.bool)
    mask[1:, :2] = False  # left padding
    return seq, mask


# ------------------------------------------------------------------------------ by hand

def ln(mod, z):
    return F.layer_norm(z, mod.normalized_shape, mod.weight, mod.bias, mod.eps)


def lin(mod, z):
    """A host Linear by hand; a LoRA-wrapped one adds (alpha / r) B A z."""
    base = getattr(mod, "base_layer", mod)
    y = F.linear(z, base.weight, base.bias)
    if hasattr(mod, "lora_A"):
        a, b = mod.lora_A["peft_lora"].weight, mod.lora_B["peft_lora"].weight
        y = y + LORA_SCALE * (z @ a.T @ b.T)
    return y


def attention(q, k, v, heads, bias):
    b, n, d = q.shape
    split = lambda t: t.view(b, n, heads, d // heads).transpose(1, 2)  # noqa: E731
    s = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)
    if bias is not None:
        s = s + bias
    return (s.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, n, d)


def bert_by_hand(bb, ids, mask, site, drop=lambda h: h):
    x = bb.embeddings(input_ids=ids)  # word + position + type embeddings, LayerNorm
    bias = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(mask == 0, NEG)[:, None, None, :]
    for layer in bb.encoder.layer:
        a, out = layer.attention.self, layer.attention.output
        ctx = attention(lin(a.query, x), lin(a.key, x), lin(a.value, x), HEADS, bias)
        x = site(out, drop(lin(out.dense, ctx)), x, x, out.LayerNorm)
        inner = F.gelu(lin(layer.intermediate.dense, x))
        x = site(layer.output, drop(lin(layer.output.dense, inner)), x, x, layer.output.LayerNorm)
    return x


def vit_by_hand(bb, pix, site, drop=lambda h: h):
    x = bb.embeddings(pix)  # patches + CLS + positions
    for layer in bb.layers:
        a = layer.attention
        z = ln(layer.layernorm_before, x)
        ctx = attention(lin(a.q_proj, z), lin(a.k_proj, z), lin(a.v_proj, z), HEADS, None)
        x = site(a, drop(lin(a.o_proj, ctx)), x, z, None)          # pre-LN: no LN after the add
        z = ln(layer.layernorm_after, x)
        x = site(layer.mlp, drop(lin(layer.mlp.fc2, F.gelu(lin(layer.mlp.fc1, z)))), x, z, None)
    return ln(bb.layernorm, x)


def sasrec_by_hand(u, seq, mask, site, drop=lambda h: h):
    n = seq.shape[1]
    x = ln(u.ln_in, seq + u.pos.weight[-n:])
    visible = torch.ones(n, n, dtype=torch.bool).tril() & mask[:, None, None, :]
    bias = torch.zeros(visible.shape, dtype=x.dtype).masked_fill(~visible, NEG)
    for blk in u.blocks:
        a = blk.attn
        ctx = attention(lin(a.query, x), lin(a.key, x), lin(a.value, x), a.heads, bias)
        x = site(a, drop(lin(a.out, ctx)), x, x, blk.ln_attn)
        x = site(blk.ffn, drop(lin(blk.ffn.fc2, F.relu(lin(blk.ffn.fc1, x)))), x, x, blk.ln_ffn)
    return x


def f_linear(act, s=1.0):
    return lambda ad, z: s * lin(ad.up, act(lin(ad.down, z)))


def phm_weight(layer):
    """Compacter's W = sum_i A_i (x) (s_i t_i), by torch.kron."""
    rules = layer.rules
    return sum(torch.kron(rules[i], layer.s[i] @ layer.t[i]) for i in range(rules.shape[0]))


def f_phm(ad, z):
    down = z @ phm_weight(ad.down) + ad.down.bias
    return F.gelu(down) @ phm_weight(ad.up) + ad.up.bias


def formula(kind, f):
    """The sublayer's output ``out`` given h, x, x_sub and the host LayerNorm (AdapterHub's forms)."""
    def site(parent, h, x, x_sub, layernorm):
        norm = (lambda z: z) if layernorm is None else (lambda z: ln(layernorm, z))  # noqa: E731
        ad = getattr(parent, "peft_adapter", None)
        if kind == "none" or ad is None:
            return norm(x + h)
        if kind == "houlsby":                       # double_seq_bn
            return norm(x + h + f(ad, h))
        if kind == "pfeiffer":                      # seq_bn: the host LN before and after
            return norm(x + h + f(ad, norm(x + h)))
        assert kind == "parallel"                   # par_bn
        return norm(x + h + f(ad, x_sub))
    return site


SMALL = {"item_bottleneck": 4, "user_bottleneck": 4}
METHODS = {  # method -> (options, formula kind, f)
    "houlsby": (SMALL, "houlsby", f_linear(F.relu)),
    "pfeiffer": (SMALL, "pfeiffer", f_linear(F.relu)),
    "parallel": ({**SMALL, "scaling": SCALING}, "parallel", f_linear(F.relu, SCALING)),
    "compacter": (SMALL, "houlsby", f_phm),
    "houlsby_gelu_pfeiffer_mha": ({**SMALL, "original_ln_before": True, "activation": "gelu",
                                   "scaling": 0.5}, "pfeiffer", f_linear(F.gelu, 0.5)),
}


def run_method(name):
    options, kind, f = METHODS[name]
    method = name.split("_")[0]
    return method, options, formula(kind, f)


def close(a, b):
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=1e-6, rtol=0), (a - b).abs().max().item()


# ------------------------------------------------------------------------------ formulas

def test_hand_implementations_match_the_unmodified_hosts():
    model = recommender("bert").double()
    ids, mask = text_inputs()
    bb = model.item_encoder.backbone
    with torch.no_grad():
        close(bb(input_ids=ids, attention_mask=mask).last_hidden_state,
              bert_by_hand(bb, ids, mask, formula("none", None)))
        seq, smask = user_inputs()
        close(model.user_encoder(seq, smask),
              sasrec_by_hand(model.user_encoder, seq, smask, formula("none", None)))
        vit = recommender("vit").double().item_encoder.backbone
        close(vit(pixel_values=pixels()).last_hidden_state,
              vit_by_hand(vit, pixels(), formula("none", None)))


@pytest.mark.parametrize("name", list(METHODS))
def test_bert_and_sasrec_follow_the_formula(name):
    method, options, site = run_method(name)
    if name == "houlsby_gelu_pfeiffer_mha":
        options = {**options, "positions": "both"}
    model = adapted(method, **options)
    ids, mask = text_inputs()
    seq, smask = user_inputs()
    bb, u = model.item_encoder.backbone, model.user_encoder
    with torch.no_grad():
        got = bb(input_ids=ids, attention_mask=mask).last_hidden_state
        close(got, bert_by_hand(bb, ids, mask, site))
        # not the host's output: the adapters act
        assert not torch.allclose(got, bert_by_hand(bb, ids, mask, formula("none", None)), atol=1e-3)
        close(u(seq, smask), sasrec_by_hand(u, seq, smask, site))


@pytest.mark.parametrize("name", ["houlsby", "pfeiffer", "parallel", "compacter"])
def test_vit_follows_the_formula(name):
    """Pre-LN with one dropout module after both sublayers: each site's adapter acts once."""
    method, options, site = run_method(name)
    model = adapted(method, item="vit", **options)
    bb = model.item_encoder.backbone
    with torch.no_grad():
        got = bb(pixel_values=pixels()).last_hidden_state
        close(got, vit_by_hand(bb, pixels(), site))
        assert not torch.allclose(got, vit_by_hand(bb, pixels(), formula("none", None)), atol=1e-3)


def test_pfeiffer_differs_from_a_houlsby_adapter_after_the_ffn():
    """The old `pfeiffer` (a houlsby adapter after the FFN only) is `houlsby` with positions: ffn;
    with the same weights it computes another function."""
    model = adapted("pfeiffer", **SMALL)
    old = adapted("houlsby", positions="ffn", **SMALL)
    old.load_state_dict(model.state_dict())
    ids, mask = text_inputs()
    with torch.no_grad():
        a = model.item_encoder.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        b = old.item_encoder.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        close(b, bert_by_hand(old.item_encoder.backbone, ids, mask,
                              formula("houlsby", f_linear(F.relu))))
    assert not torch.allclose(a, b, atol=1e-3)


def test_lora_follows_the_formula():
    model = adapted("lora", towers="item", item_rank=4, item_alpha=8.0)
    ids, mask = text_inputs()
    bb = model.item_encoder.backbone
    with torch.no_grad():
        close(bb(input_ids=ids, attention_mask=mask).last_hidden_state,
              bert_by_hand(bb, ids, mask, formula("none", None)))  # lin() adds the LoRA terms


def residual_dropouts(model, item):
    if item == "bert":
        layers = model.item_encoder.backbone.encoder.layer
        out = [m for lay in layers for m in (lay.attention.output.dropout, lay.output.dropout)]
    else:
        out = [lay.dropout for lay in model.item_encoder.backbone.layers]
    return out + [m for blk in model.user_encoder.blocks for m in (blk.attn_drop, blk.ffn_drop)]


@pytest.mark.parametrize("item", ["bert", "vit"])
@pytest.mark.parametrize("name", ["houlsby", "pfeiffer", "parallel"])
def test_adapters_act_after_the_hosts_dropout(item, name):
    """In training, with the residual-branch dropouts at p = 1 (h = 0), the adapters still act
    on what follows the dropout (AdapterHub, adapter-bert and the reference place them there)."""
    method, options, site = run_method(name)
    model = adapted(method, item=item, **options)
    for m in residual_dropouts(model, item):
        m.p = 1.0
    model.train()
    zero = torch.zeros_like
    bb, u = model.item_encoder.backbone, model.user_encoder
    seq, smask = user_inputs()
    with torch.no_grad():
        if item == "bert":
            ids, mask = text_inputs()
            close(bb(input_ids=ids, attention_mask=mask).last_hidden_state,
                  bert_by_hand(bb, ids, mask, site, drop=zero))
        else:
            close(bb(pixel_values=pixels()).last_hidden_state,
                  vit_by_hand(bb, pixels(), site, drop=zero))
        close(u(seq, smask), sasrec_by_hand(u, seq, smask, site, drop=zero))


def test_original_ln_before_is_for_serial_adapters():
    from adapter4rec.errors import ConfigError

    with pytest.raises(ConfigError, match="original_ln_before"):
        peft.apply(recommender(), "pfeiffer", insertion="parallel")
    with pytest.raises(ConfigError, match="peft.options.scaling"):
        peft.apply(recommender(), "parallel", scaling=-1)


# ------------------------------------------------------------------------ what trains

def lin_count(i, o):
    return i * o + o


def adapter_count(hidden, m):
    return lin_count(hidden, m) + lin_count(m, hidden)


def phm_count(hidden, m, n=4, r=1):  # rank-r factors of down and up, their biases
    return 2 * r * (hidden + m) + m + hidden


def layernorm_count(hidden, layers):  # the embeddings' / ln_in, then two per layer
    return (1 + 2 * layers) * 2 * hidden


STUDY = {  # method -> (item, user) trainable in the towers with its defaults, LayerNorms excluded
    "houlsby": (L * 2 * adapter_count(H, 64), B * 2 * adapter_count(D, 16)),
    "pfeiffer": (L * adapter_count(H, 64), B * adapter_count(D, 16)),
    "parallel": (L * 2 * adapter_count(H, 64), B * 2 * adapter_count(D, 16)),
    "compacter": (L * 2 * phm_count(H, 64) + 4 ** 3, B * 2 * phm_count(D, 16) + 4 ** 3),
}


def tower_layernorms(model, tower):
    prefix = {"item": "item_encoder.backbone.", "user": "user_encoder."}[tower]
    return {n for n in model.peft_tuned if n.startswith(prefix)}


@pytest.mark.parametrize("method", list(STUDY))
def test_bottleneck_methods_tune_the_layernorms_by_default(method):
    model = recommender()
    s = peft.apply(model, method)  # the study's preset
    item, user = STUDY[method]
    assert s["towers"]["item"]["trainable"] == item + layernorm_count(H, L)
    assert s["towers"]["user"]["trainable"] == user + layernorm_count(D, B)
    assert s["options"]["tune_layernorm"] is True
    assert "item_encoder.backbone.embeddings.LayerNorm.weight" in model.peft_tuned
    assert "user_encoder.ln_in.bias" in model.peft_tuned
    assert all("LayerNorm" in n or ".ln_" in n for n in model.peft_tuned)
    model = recommender()
    s = peft.apply(model, method, tune_layernorm=False)  # the RQ3 ablation: adapters only
    assert (s["towers"]["item"]["trainable"], s["towers"]["user"]["trainable"]) == (item, user)
    assert model.peft_tuned == set()


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_lora_and_prompt_tune_no_layernorm_by_default(method):
    model = recommender()
    s = peft.apply(model, method)
    assert s["options"]["tune_layernorm"] is False and model.peft_tuned == set()
    assert not any(p.requires_grad for n, p in model.named_parameters()
                   if "LayerNorm" in n or ".ln_" in n)


@pytest.mark.parametrize("method", list(STUDY))
def test_restricted_layers_tune_only_their_layernorms(method):
    model = recommender()
    peft.apply(model, method, layers=[-1])
    want = {f"item_encoder.backbone.encoder.layer.{L - 1}.{ln}.{w}"
            for ln in ("attention.output.LayerNorm", "output.LayerNorm") for w in ("weight", "bias")}
    want |= {f"user_encoder.blocks.{B - 1}.{ln}.{w}" for ln in ("ln_attn", "ln_ffn")
             for w in ("weight", "bias")}
    assert model.peft_tuned == want
    tuned = {n for n, p in model.named_parameters() if p.requires_grad
             and "peft_" not in n and not n.startswith("item_encoder.project")}
    assert tuned == want  # the lower layer and the embeddings stay frozen
    from adapter4rec.encoders.backbone import lowest_trainable_layer

    if method != "compacter":  # its shared PHM rules sit on the tower, outside the layers
        assert lowest_trainable_layer(model.item_encoder.backbone)[0] == L - 1  # frozen below


def test_vit_layernorms_with_all_layers_include_the_final_one():
    model = recommender("vit")
    peft.apply(model, "houlsby", towers="item")
    lns = {n.rsplit(".", 1)[0] for n in model.peft_tuned}
    assert lns == {"item_encoder.backbone.layernorm"} | {
        f"item_encoder.backbone.layers.{i}.{ln}" for i in range(L)
        for ln in ("layernorm_before", "layernorm_after")}
