"""``iisan`` as GAIR-Lab/IISAN (``Code_Cached/model/model.py`` ``IISANAdaptedMModel`` / ``ModelMM``,
``Code_Cached/model/modules.py`` ``AdapterBlock``, commit 67f5c1f): the gate temperature, the layers
read, the side block, the intra- and inter-modal chains and the fusion, each pinned against a
few-line re-implementation written here from the reference's formulas (not from the module), on
tiny random-weight BERT / ViT backbones; the earlier variant stays reproducible with options; the
cached states give the same item vectors as a backbone pass.

Every comparison is in fp32 on CPU, to 1e-6; nothing here depends on timing.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adapter4rec import peft
from adapter4rec.encoders.image import ImageItemEncoder
from adapter4rec.encoders.multimodal import MultiModalItemEncoder
from adapter4rec.encoders.sasrec import SASRec
from adapter4rec.encoders.text import TextItemEncoder
from adapter4rec.errors import ConfigError
from adapter4rec.model import Recommender
from adapter4rec.peft.iisan import EARLIER_OPTIONS, layer_states, read_layers

V, P = 100, 40          # BERT vocabulary, positions
H, I = 32, 64           # backbone width, FFN width
D, S = 16, 6            # SASRec width, sequence length
M = 8                   # side bottleneck
# the earlier (pre-reference) computation, spelled as options
EARLIER = {"gate_temperature": 1.0, "gate_on": "side", "embedding_block": False, "block_norm": True,
           "inter_mix": "sum", "fusion": "linear", "activation": "gelu", "dropout": 0.1}


def bert(layers=2, seed=0):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=I, max_position_embeddings=P, type_vocab_size=2,
                        pad_token_id=0)
    torch.manual_seed(seed)
    return BertModel(config, add_pooling_layer=False).eval()


def vit(layers=2, seed=1):
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(hidden_size=H, num_hidden_layers=layers, num_attention_heads=2,
                       intermediate_size=I, image_size=32, patch_size=16)
    torch.manual_seed(seed)
    return ViTModel(config, add_pooling_layer=False).eval()


def model(layers=2, image=False, seed=0, **options):
    """A Recommender over a tiny BERT (and ViT) with iisan applied; every trainable parameter of
    the side network and the item heads moved by seeded noise (stands for training: the gates are
    then far from 0, where the temperature and the orientation of the mix show)."""
    text = TextItemEncoder(bert(layers, seed), D)
    enc = MultiModalItemEncoder(text, ImageItemEncoder(vit(layers, seed + 1), D)) if image else text
    torch.manual_seed(seed + 2)
    rec = Recommender(enc, SASRec(D, S, 2, 2, 0.1), "bce")
    peft.apply(rec, "iisan", **{"bottleneck": M, **options})
    g = torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():
        for name, p in rec.item_encoder.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * (0.3 if name.endswith("gates") else 0.05))
    return rec.eval()


def tokens(seed=5):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (6, 9), generator=g)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    mask[3:, 6:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}


def pixels(seed=6):
    g = torch.Generator().manual_seed(seed)
    return {"pixels": torch.randint(0, 256, (6, 3, 32, 32), generator=g, dtype=torch.uint8)}


def content(image=False):
    return {**tokens(), **(pixels() if image else {})}


# --- the reference's formulas, written out independently -------------------------------------

def cls_states(rec, image=False):
    """{modality: [hidden_states[l][:, 0] for every l]} straight from the backbones' own outputs."""
    enc = rec.item_encoder
    text = enc.encoders["text"] if image else enc
    with torch.no_grad():
        states = text.backbone(**tokens(), output_hidden_states=True).hidden_states
        out = {"text": [h[:, 0] for h in states]}
        if image:
            img = enc.encoders["image"]
            x = img.normalise(pixels()["pixels"])
            states = img.backbone(pixel_values=x, output_hidden_states=True).hidden_states
            out["image"] = [h[:, 0] for h in states]
    return out


def params(rec):
    return {k: v.detach() for k, v in rec.item_encoder.peft_side.state_dict().items()}


def adapter_block(w, prefix, x, act=F.relu):
    """The reference's AdapterBlock: fc_up(act(fc_down(x))) + x."""
    return F.linear(act(F.linear(x, w[prefix + "down.weight"], w[prefix + "down.bias"])),
                    w[prefix + "up.weight"], w[prefix + "up.bias"]) + x


def reference_intra(w, name, h, layers, T=0.1):
    """hidden_states_last = 0; for each layer read: gate = sigmoid(g / 0.1),
    fusion = gate * h_l + (1 - gate) * last, last = AdapterBlock(fusion)."""
    last = torch.zeros_like(h[0])
    for i, l in enumerate(layers):
        gate = torch.sigmoid(w[f"intra.{name}.gates"][i] / T)
        last = adapter_block(w, f"intra.{name}.blocks.{i}.adapter.", gate * h[l] + (1 - gate) * last)
    return last


def reference_item(rec, layers, image=False):
    w, h = params(rec), cls_states(rec, image)
    enc = rec.item_encoder
    heads = {"text": (enc.encoders["text"] if image else enc).project[0]}
    if image:
        heads["image"] = enc.encoders["image"].project[0]
    parts = []
    for m, head in heads.items():  # e_m = pre_fc(fc_m(side output)): fc_bert / fc_cv, then the head
        s = reference_intra(w, m, h[m], layers)
        parts.append(head(F.linear(s, w[f"out.{m}.weight"], w[f"out.{m}.bias"])).detach())
    if image:  # last_mm = AdapterBlock(last_mm + gate * h_cv + (1 - gate) * h_text), from 0
        mm = torch.zeros_like(h["text"][0])
        for i, l in enumerate(layers):
            gate = torch.sigmoid(w["inter.gates"][i] / 0.1)
            x = mm + gate * h["image"][l] + (1 - gate) * h["text"][l]
            mm = adapter_block(w, f"inter.blocks.{i}.adapter.", x)
        mm = F.linear(F.linear(mm, w["inter_out.weight"], w["inter_out.bias"]),
                      w["inter_down.weight"], w["inter_down.bias"])
        parts.append(mm)
    return F.linear(torch.cat(parts, -1), w["fuse.weight"], w["fuse.bias"])  # com_dense, no activation


# --- tests -----------------------------------------------------------------------------------

def test_defaults_follow_the_reference():
    assert EARLIER_OPTIONS == EARLIER  # what configs / adapter files of earlier runs need
    d = peft.defaults("iisan")
    assert d["gate_temperature"] == 0.1 and d["gate_on"] == "backbone"
    assert d["embedding_block"] is True and d["block_norm"] is False
    assert d["inter_mix"] == "reference" and d["fusion"] == "reference"
    assert d["activation"] == "relu" and d["dropout"] == 0.0
    assert d["layer_stride"] == 2 and d["bottleneck"] == 64 and d["gate_init"] == 0.0


@pytest.mark.parametrize("T", [None, 0.5, 1.0])  # None: the default, 0.1
def test_gate_temperature_is_the_configured_one(T):
    rec = model(layers=2, layer_stride=1, **({} if T is None else {"gate_temperature": T}))
    T = 0.1 if T is None else T
    chain = rec.item_encoder.peft_side.intra["text"]
    assert chain.temperature == T
    with torch.no_grad():
        chain.gates.copy_(torch.tensor([0.2, -0.15, 0.3]))
    seen_in, seen_out = [], []
    hooks = [b.register_forward_pre_hook(lambda mod, a: seen_in.append(a[0])) for b in chain.blocks]
    hooks += [b.register_forward_hook(lambda mod, a, o: seen_out.append(o)) for b in chain.blocks]
    try:
        with torch.no_grad():
            rec.encode_items(tokens())
    finally:
        for hk in hooks:
            hk.remove()
    h = cls_states(rec)["text"]
    g = torch.sigmoid(torch.tensor([0.2, -0.15, 0.3]) / T)
    assert torch.allclose(chain.gate_values().detach(), g, atol=0, rtol=1e-6)
    # block 0 mixes the embedding output with the zero start; block i the layer with block i-1's output
    assert torch.allclose(seen_in[0], g[0] * h[0], atol=1e-6)
    for i in (1, 2):
        assert torch.allclose(seen_in[i], g[i] * h[i] + (1 - g[i]) * seen_out[i - 1], atol=1e-6)


@pytest.mark.parametrize("n_layers, stride, read", [
    (6, 2, [0, 2, 4, 6]), (12, 2, [0, 2, 4, 6, 8, 10, 12]), (12, 3, [0, 3, 6, 9, 12]),
    (12, 5, [0, 2, 7, 12]), (6, 1, [0, 1, 2, 3, 4, 5, 6])])
def test_layer_choice_is_the_configured_one(n_layers, stride, read):
    assert read_layers(n_layers, stride) == read
    rec = model(layers=n_layers, layer_stride=stride)
    side = rec.item_encoder.peft_side
    assert side.layers == {"text": read}
    assert len(side.intra["text"].blocks) == len(read)  # one block per layer read, embeddings included
    off = model(layers=n_layers, layer_stride=stride, embedding_block=False).item_encoder.peft_side
    assert off.layers == {"text": read} and len(off.intra["text"].blocks) == len(read) - 1
    # the states read are those layers' CLS states, as the backbone reports them
    got = layer_states(rec.item_encoder, tokens(), read)
    want = torch.stack([cls_states(rec)["text"][l] for l in read], 1)
    assert torch.allclose(got, want, atol=1e-6)


def test_default_block_has_no_layernorm_and_block_norm_restores_it():
    side = model().item_encoder.peft_side
    assert not any(isinstance(m, nn.LayerNorm) for m in side.modules())
    block = side.intra["text"].blocks[0]
    w = {k: v.detach() for k, v in block.adapter.state_dict().items()}
    x = torch.randn(5, H, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(block(x), adapter_block(w, "", x), atol=1e-6)  # x + up(relu(down(x)))
    normed = model(block_norm=True).item_encoder.peft_side.intra["text"].blocks[0]
    assert isinstance(normed.norm, nn.LayerNorm)
    w = {k: v.detach() for k, v in normed.adapter.state_dict().items()}
    with torch.no_grad():
        want = F.layer_norm(adapter_block(w, "", x), (H,), normed.norm.weight, normed.norm.bias)
        assert torch.allclose(normed(x), want, atol=1e-6)


@pytest.mark.parametrize("n_layers, stride", [(2, 1), (4, 2)])
def test_text_items_match_the_reference_formula(n_layers, stride):
    rec = model(layers=n_layers, layer_stride=stride)
    with torch.no_grad():
        got = rec.encode_items(tokens())
    assert torch.allclose(got, reference_item(rec, read_layers(n_layers, stride)), atol=1e-6)


def test_text_image_items_match_the_reference_formula():
    rec = model(layers=4, image=True)  # reads 0, 2, 4 of each backbone: 3 blocks per chain
    side = rec.item_encoder.peft_side
    assert side.fuse.in_features == 3 * D  # com_dense over [text ; image ; inter]
    with torch.no_grad():
        got = rec.encode_items(content(image=True))
    assert torch.allclose(got, reference_item(rec, [0, 2, 4], image=True), atol=1e-6)
    alone = model(layers=4, image=True, inter=False).item_encoder.peft_side
    assert alone.inter is None and alone.fuse.in_features == 2 * D


def test_item_heads_train_under_the_reference_fusion_only():
    rec = model(image=True)
    heads = [rec.item_encoder.encoders[m].project for m in ("text", "image")]
    assert all(p.requires_grad for h in heads for p in h.parameters())
    rec.train()
    rec.encode_items(content(image=True)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for h in heads for p in h.parameters())
    linear = model(image=True, fusion="linear")
    assert not any(p.requires_grad for m in ("text", "image")
                   for p in linear.item_encoder.encoders[m].project.parameters())
    assert not any(p.requires_grad for p in model(fusion="linear").item_encoder.project.parameters())


# the earlier side network's parameter names (adapter files of earlier runs name these)
EARLIER_KEYS = {
    False: ["intra.text.gates"] + [f"intra.text.blocks.{i}.{p}" for i in range(2) for p in (
        "adapter.down.weight", "adapter.down.bias", "adapter.up.weight", "adapter.up.bias",
        "norm.weight", "norm.bias")] + ["fuse.0.weight", "fuse.0.bias"],
}
_CHAIN = EARLIER_KEYS[False][:-2]
EARLIER_KEYS[True] = (_CHAIN + [k.replace("text", "image") for k in _CHAIN]
                      + [k.replace("intra.text", "inter") for k in _CHAIN] + ["fuse.0.weight", "fuse.0.bias"])


def earlier_chain(w, prefix, h):
    """s = h_0; s = LayerNorm(x + up(gelu(down(x)))), x = g * s + (1 - g) * h_l, g = sigmoid(gate)."""
    s = h[0]
    for i in range(len(h) - 1):
        g = torch.sigmoid(w[prefix + "gates"][i])
        x = g * s + (1 - g) * h[i + 1]
        b = f"{prefix}blocks.{i}."
        s = F.layer_norm(adapter_block(w, b + "adapter.", x, F.gelu), (H,), w[b + "norm.weight"],
                         w[b + "norm.bias"])
    return s


@pytest.mark.parametrize("image", [False, True])
def test_earlier_variant_is_reproducible_with_options(image):
    rec = model(layers=2, image=image, layer_stride=1, **EARLIER)
    w = params(rec)
    assert list(w) == EARLIER_KEYS[image]
    h = cls_states(rec, image)
    parts = [earlier_chain(w, f"intra.{m}.", h[m]) for m in h]
    if image:
        parts.append(earlier_chain(w, "inter.", [a + b for a, b in zip(h["text"], h["image"])]))
    want = F.gelu(F.linear(torch.cat(parts, -1), w["fuse.0.weight"], w["fuse.0.bias"]))
    with torch.no_grad():
        got = rec.encode_items(content(image))
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("options", [{}, EARLIER], ids=["reference", "earlier"])
@pytest.mark.parametrize("image", [False, True])
def test_cached_and_uncached_states_agree(image, options):
    rec = model(layers=4, image=image, **options)
    side, enc = rec.item_encoder.peft_side, rec.item_encoder
    encoders = enc.encoders if image else {"text": enc}
    states = {m: layer_states(encoders[m], content(image), side.layers[m]) for m in side.layers}
    cached = {f"hidden_{m}": s for m, s in states.items()} if image else {"hidden": states["text"]}
    with torch.no_grad():
        direct = rec.encode_items(content(image))
        assert torch.equal(rec.encode_items(cached), direct)
        half = {k: v.half() for k, v in cached.items()}  # as the cache stores them
        assert torch.allclose(rec.encode_items(half), direct, atol=5e-3)


@pytest.mark.parametrize("key, value", [
    ("gate_temperature", 0), ("gate_temperature", -1.0), ("gate_temperature", "warm"),
    ("gate_temperature", float("inf")), ("gate_on", "layer"), ("embedding_block", "yes"),
    ("block_norm", 1), ("inter_mix", "mean"), ("fusion", "heads")])
def test_bad_options_name_the_key(key, value):
    rec = Recommender(TextItemEncoder(bert(), D), SASRec(D, S, 2, 2, 0.1), "bce")
    with pytest.raises(ConfigError, match=rf"peft\.options\.{key}"):
        peft.apply(rec, "iisan", **{key: value})
