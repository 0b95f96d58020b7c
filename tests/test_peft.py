"""The PEFT registry on tiny in-memory models: identity at initialisation, the exact trainable sets
(against hand calculations), gradients, placement options, adapter files and domain switching.

Models: a 2-layer BERT of width 32 (and RoBERTa / ViT / ViT-MAE of the same size), SASRec of width
16 with 2 blocks; every model is built from a seed, so two builds are the same "backbone".

The method x property matrix takes its methods from ``peft.available()`` (the registry, filled by
importing ``adapter4rec.peft``): every registered method runs every property test unless the
property's exemption table (a ``{method: reason}`` dict beside the test) names it; exempt methods
are still collected, skipped with their reason. ``test_matrix_covers_every_registered_method``
fails when a registered method is in neither, or when an exemption names no registered method.
"""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from adapter4rec import peft
from adapter4rec.encoders.id import IdItemEncoder
from adapter4rec.encoders.sasrec import SASRec
from adapter4rec.encoders.text import TextItemEncoder
from adapter4rec.errors import CheckpointError, ConfigError
from adapter4rec.model import Recommender

from conftest import perturb

V, P, T = 100, 40, 2          # BERT vocabulary, positions, token types
H, I, L = 32, 64, 2           # BERT width, FFN width, layers
D, B, S = 16, 2, 6            # SASRec width, blocks, sequence length
MI, MU = 8, 4                 # bottleneck sizes used in these tests
SHARED = Path(__file__).resolve().parents[2] / "shared" / "pretrained_configs"
ROOT = Path(__file__).resolve().parents[1]


REGISTERED = peft.available()  # the matrix's methods: every registered one
# the study's methods: these must stay registered (and documented in docs/peft.md)
STUDY = ["full", "frozen", "houlsby", "pfeiffer", "parallel", "kadapter", "compacter", "lora",
         "prompt", "layernorm", "bitfit"]
SMALL = {"item_bottleneck": MI, "user_bottleneck": MU}
OPTIONS = {  # the options each method is tested with (every registered method needs an entry)
    "full": {}, "frozen": {}, "houlsby": SMALL, "pfeiffer": SMALL, "parallel": SMALL,
    "kadapter": SMALL, "compacter": SMALL, "lora": {"item_rank": 4, "user_rank": 2},
    "prompt": {"n_tokens": 3}, "layernorm": {}, "bitfit": {},
    "iisan": {"bottleneck": MI, "layer_stride": 1},  # 3 side blocks: embeddings, layer 1, layer 2
}
# starting as the identity: the model's outputs are unchanged by inserting these
IDENTITY = {
    "full": {}, "frozen": {}, "houlsby": {**SMALL, "zero_init_up": True},
    "pfeiffer": {**SMALL, "zero_init_up": True}, "parallel": {**SMALL, "zero_init_up": True},
    "compacter": SMALL, "lora": OPTIONS["lora"], "layernorm": {}, "bitfit": {},
    "kadapter": SMALL,  # its combining projection starts as [I | 0]
}


def matrix(exempt: dict[str, str]) -> list:
    """Every registered method as a parameter of a property test: those in the property's
    exemption table skipped, with its reason."""
    return [pytest.param(m, id=m, marks=pytest.mark.skip(reason=f"exempt: {exempt[m]}"))
            if m in exempt else pytest.param(m, id=m) for m in REGISTERED]


def bert(seed=0, family="bert"):
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    cls, model = (BertConfig, BertModel) if family == "bert" else (RobertaConfig, RobertaModel)
    config = cls(vocab_size=V, hidden_size=H, num_hidden_layers=L, num_attention_heads=2,
                 intermediate_size=I, max_position_embeddings=P, type_vocab_size=T, pad_token_id=0)
    torch.manual_seed(seed)
    return model(config, add_pooling_layer=False).eval()


def vit(family="vit", seed=0):
    from transformers import AutoConfig, ViTConfig, ViTMAEConfig, ViTMAEModel, ViTModel

    name = "vit-base-patch16-224" if family == "vit" else "vit-mae-base"
    if (SHARED / name / "config.json").is_file():
        config = AutoConfig.from_pretrained(SHARED / name)
    else:
        config = ViTConfig() if family == "vit" else ViTMAEConfig()
    config.update({"hidden_size": H, "num_hidden_layers": L, "num_attention_heads": 2,
                   "intermediate_size": I, "image_size": 32, "patch_size": 16})
    if family == "vit_mae":
        config.mask_ratio = 0.0
    torch.manual_seed(seed)
    if family == "vit":
        return ViTModel(config, add_pooling_layer=False).eval()
    return ViTMAEModel(config).eval()


def make_model(seed=0, item="bert"):
    """A Recommender with a tiny pretrained-like backbone; the same seed builds the same model."""
    if item in ("bert", "roberta"):
        enc = TextItemEncoder(bert(seed, item), D)
    elif item == "id":
        torch.manual_seed(seed)
        enc = IdItemEncoder(20, D)
    else:
        from adapter4rec.encoders.image import ImageItemEncoder

        enc = ImageItemEncoder(vit(item, seed), D)
    torch.manual_seed(seed + 1)
    user = SASRec(D, S, B, 2, 0.1)
    torch.manual_seed(seed + 2)
    if hasattr(enc, "project"):
        enc.project[0].reset_parameters()
    return Recommender(enc, user, "bce").eval()


def inputs(item="bert", seed=123):
    g = torch.Generator().manual_seed(seed)
    if item in ("bert", "roberta"):
        ids = torch.randint(5, V, (6, 9), generator=g)
        ids[:, 0] = 2  # a CLS-like first token
        mask = torch.ones_like(ids)
        mask[3:, 6:] = 0  # some titles are shorter
        ids[mask == 0] = 0
        content = {"input_ids": ids, "attention_mask": mask}
    elif item == "id":
        content = {"ids": torch.arange(1, 7)}
    else:
        content = {"pixels": torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8)}
    seq = torch.randn(5, S, D, generator=g)
    seq_mask = torch.ones(5, S, dtype=torch.bool)
    seq_mask[2:, :2] = False  # left padding
    return content, seq, seq_mask


def outputs(model, item="bert"):
    content, seq, mask = inputs(item)
    model.eval()
    with torch.no_grad():
        return model.encode_items(content), model.user_encoder(seq, mask)


def loss_of(model, item="bert"):
    """A loss that depends on every output coordinate of both towers."""
    content, seq, mask = inputs(item)
    g = torch.Generator().manual_seed(7)
    items, users = model.encode_items(content), model.user_encoder(seq, mask)
    return ((items * torch.randn(items.shape, generator=g)).sum()
            + (users * torch.randn(users.shape, generator=g)).sum())


def applied(method, item="bert", seed=0, **options):
    model = make_model(seed, item)
    peft.apply(model, method, **{**OPTIONS[method], **options})
    return model


# ---------------------------------------------------------------------------------------------
# registry and options

def test_available_lists_every_method():
    assert set(STUDY) <= set(peft.available())
    for m in peft.available():
        assert isinstance(peft.defaults(m), dict)
        for name, default, doc in peft.options_of(m):
            assert doc, f"{m}.{name} has no description"


# methods docs/peft.md does not document (a section `### `<method>`` and every option named)
NOT_IN_PEFT_DOCS: dict[str, str] = {}


@pytest.mark.parametrize("method", matrix(NOT_IN_PEFT_DOCS))
def test_docs_list_every_method_and_option(method):
    doc = (ROOT / "docs" / "peft.md").read_text(encoding="utf-8")
    assert f"### `{method}`" in doc, method
    for name, _, _ in peft.options_of(method):
        assert f"`{name}`" in doc, (method, name)


def test_unknown_method_and_bad_options_name_the_key():
    model = make_model()
    with pytest.raises(ConfigError, match="unknown peft.method 'houlsbi'"):
        peft.apply(model, "houlsbi")
    bad = [({"bottleneck": 8}, "peft.options.bottleneck"),
           ({"item_bottleneck": "64"}, "peft.options.item_bottleneck"),
           ({"item_bottleneck": 0}, "peft.options.item_bottleneck"),
           ({"zero_init_up": "True"}, "peft.options.zero_init_up"),
           ({"towers": "items"}, "peft.options.towers"),
           ({"positions": ["mha", "attention"]}, "peft.options.positions"),
           ({"layers": "first"}, "peft.options.layers"),
           ({"layers": [0, 5]}, "peft.options.layers"),
           ({"activation": "tanh"}, "peft.options.activation")]
    for options, key in bad:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            peft.apply(make_model(), "houlsby", **options)
    with pytest.raises(ConfigError, match="peft.options.targets"):
        peft.apply(make_model(), "lora", targets=["query", "gate"])
    with pytest.raises(ConfigError, match="item encoder's input only"):
        peft.apply(make_model(), "prompt", towers="both")


def test_apply_twice_is_refused():
    model = applied("houlsby")
    with pytest.raises(ConfigError, match="already has peft method 'houlsby'"):
        peft.apply(model, "lora")


def test_summary_and_recorded_config():
    model = make_model()
    s = peft.apply(model, "houlsby", **SMALL)
    assert s["method"] == "houlsby" and s["options"]["item_bottleneck"] == MI
    assert s["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert s["total"] == sum(p.numel() for p in model.parameters())
    assert s["total"] == sum(t["total"] for t in s["towers"].values())
    assert model.peft_config == {"method": "houlsby", **peft.defaults("houlsby"), **SMALL}


# ---------------------------------------------------------------------------------------------
# identity at initialisation

# methods whose insertion changes the outputs: identity at insertion does not hold (on any backbone)
NOT_IDENTITY = {
    "prompt": "soft prompt tokens change the attention over the title "
              "(test_prompt_is_not_identity_but_keeps_shapes)",
    "iisan": "its side network replaces the item head's output: the item vectors change at "
             "insertion (test_iisan_is_not_identity_but_keeps_shapes)",
}


@pytest.mark.parametrize("method", matrix(NOT_IDENTITY))
def test_inserting_changes_no_output_at_init(method):
    base = make_model()
    before = outputs(base)
    peft.apply(base, method, **IDENTITY[method])
    after = outputs(base)
    for a, b in zip(before, after):
        assert torch.equal(a, b), method


@pytest.mark.parametrize("item", ["roberta", "vit", "vit_mae"])
@pytest.mark.parametrize("method", matrix(NOT_IDENTITY))
def test_identity_on_other_backbones(item, method):
    base = make_model(item=item)
    before = outputs(base, item)
    peft.apply(base, method, **IDENTITY[method])
    after = outputs(base, item)
    for a, b in zip(before, after):
        assert torch.equal(a, b), (item, method)


def test_prompt_is_not_identity_but_keeps_shapes():
    base = make_model()
    before = outputs(base)
    peft.apply(base, "prompt", n_tokens=3)
    after = outputs(base)
    assert after[0].shape == before[0].shape and not torch.equal(after[0], before[0])
    assert torch.equal(after[1], before[1])  # the user tower is untouched


@pytest.mark.parametrize("item", ["bert", "roberta", "vit", "vit_mae"])
def test_iisan_is_not_identity_but_keeps_shapes(item):
    base = make_model(item=item)
    before = outputs(base, item)
    peft.apply(base, "iisan", **OPTIONS["iisan"])  # no cache: the frozen backbone runs every call
    after = outputs(base, item)
    assert after[0].shape == before[0].shape and not torch.equal(after[0], before[0])
    assert torch.equal(after[1], before[1])  # the user tower trains, but nothing is inserted in it


# ---------------------------------------------------------------------------------------------
# the trainable set, against hand calculations

def lin(i, o):
    return i * o + o


def block(m):  # one SASRec block of width m (the reference's): bias-free attention q/k/v/out,
    return 4 * m * m + lin(m, 4 * m) + lin(4 * m, m) + 4 * m  # FFN m -> 4m -> m, two LayerNorms


BERT_TOTAL = (V + P + T) * H + 2 * H + L * (4 * lin(H, H) + lin(H, I) + lin(I, H) + 4 * H)
SASREC_TOTAL = S * D + 2 * D + B * block(D)
HEAD = lin(H, D)


def phm(hidden, m, n=4):  # one Compacter adapter: rank-1 factors of down and up, biases
    return n * (hidden // n + m // n) * 2 + m + hidden


def kadapter(hidden, m, reads=2, side=2):
    return reads * (lin(hidden, m) + lin(m, hidden) + side * block(m)) + lin(2 * hidden, hidden)


LN_ITEM, LN_USER = (1 + 2 * L) * 2 * H, (1 + 2 * B) * 2 * D  # every LayerNorm of a tower
EXPECTED = {  # method -> (trainable in the item tower, in the user tower)
    "full": (BERT_TOTAL, SASREC_TOTAL),
    "frozen": (0, 0),
    # the bottleneck adapters and Compacter also tune the LayerNorms by default (tune_layernorm)
    "houlsby": (L * 2 * (lin(H, MI) + lin(MI, H)) + LN_ITEM, B * 2 * (lin(D, MU) + lin(MU, D)) + LN_USER),
    "pfeiffer": (L * (lin(H, MI) + lin(MI, H)) + LN_ITEM, B * (lin(D, MU) + lin(MU, D)) + LN_USER),
    "parallel": (L * 2 * (lin(H, MI) + lin(MI, H)) + LN_ITEM, B * 2 * (lin(D, MU) + lin(MU, D)) + LN_USER),
    "compacter": (L * 2 * phm(H, MI) + 4 ** 3 + LN_ITEM, B * 2 * phm(D, MU) + 4 ** 3 + LN_USER),
    "kadapter": (kadapter(H, MI), kadapter(D, MU)),
    "lora": (L * 2 * (4 * H + H * 4), B * 2 * (2 * D + D * 2)),   # query + value: A [r, in], B [out, r]
    "prompt": (3 * H, 0),
    "layernorm": ((1 + 2 * L) * 2 * H, (1 + 2 * B) * 2 * D),       # embeddings/ln_in + 2 per layer
    "bitfit": (H + L * (3 * H + H + H + I + H + H), D + B * (4 * D + D + 2 * D)),  # SASRec: FFN, LNs
}


# methods the per-tower hand counts (EXPECTED; the item head alone in `other`) do not describe
COUNTS_DO_NOT_APPLY = {
    "iisan": "its side network lives outside the towers (`other`), beside the item head's Linear "
             "that its fusion trains; counted by hand in test_iisan_trainable_set",
}
# methods for which more trains in the towers than the modules they insert
NOT_ONLY_INSERTED = {
    "full": "fine-tunes the towers' pretrained weights",
    "layernorm": "tunes the pretrained LayerNorms, inserts nothing",
    "bitfit": "tunes the pretrained biases, inserts nothing",
    "houlsby": "also tunes the LayerNorms by default (tune_layernorm)",
    "pfeiffer": "also tunes the LayerNorms by default (tune_layernorm)",
    "parallel": "also tunes the LayerNorms by default (tune_layernorm)",
    "compacter": "also tunes the LayerNorms by default (tune_layernorm)",
}


@pytest.mark.parametrize("method", matrix(COUNTS_DO_NOT_APPLY))
def test_trainable_counts_per_tower(method):
    model = make_model()
    assert sum(p.numel() for p in model.item_encoder.backbone.parameters()) == BERT_TOTAL
    assert sum(p.numel() for p in model.user_encoder.parameters()) == SASREC_TOTAL
    s = peft.apply(model, method, **OPTIONS[method])
    item, user = EXPECTED[method]
    assert s["towers"]["item"]["trainable"] == item
    assert s["towers"]["user"]["trainable"] == user
    assert s["towers"]["other"] == {"trainable": HEAD, "total": HEAD}
    inserted = s["total"] - BERT_TOTAL - SASREC_TOTAL - HEAD
    assert s["inserted"] == inserted
    if method not in NOT_ONLY_INSERTED:
        assert inserted == item + user  # exactly the inserted modules train in the towers


# methods to which "the item head trains; in the towers, what the method names" does not apply
NAMES_DO_NOT_APPLY = {
    "iisan": "trains its side network, the item head's Linear (a stage of its fusion) and the user "
             "encoder in full; its names are checked in test_iisan_trainable_set",
}


@pytest.mark.parametrize("method", matrix(NAMES_DO_NOT_APPLY))
def test_trainable_names_are_the_intended_ones(method):
    model = applied(method)
    train = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {"item_encoder.project.0.weight", "item_encoder.project.0.bias"}
    assert head <= train
    tower = train - head
    if method == "full":
        assert tower == {n for n, _ in model.named_parameters()} - head
    elif method == "frozen":
        assert tower == set()
    elif method == "layernorm":
        assert tower == model.peft_tuned and all("LayerNorm" in n or ".ln_" in n for n in tower)
    elif method == "bitfit":
        assert tower == model.peft_tuned and all(n.endswith(".bias") for n in tower)
    else:  # inserted modules, plus the LayerNorms where tune_layernorm is on (adapters' default)
        tuned = model.peft_tuned
        assert bool(tuned) == model.peft_config.get("tune_layernorm", False)
        assert all("LayerNorm" in n or ".ln_" in n for n in tuned)
        assert all("peft_" in n for n in tower - tuned)


def test_layers_positions_and_towers_options():
    def adapters(model):
        return sorted(n for n, _ in model.named_modules() if n.endswith("peft_adapter"))

    m = applied("houlsby", layers=[-1], towers="item")
    assert adapters(m) == ["item_encoder.backbone.encoder.layer.1.attention.output.peft_adapter",
                           "item_encoder.backbone.encoder.layer.1.output.peft_adapter"]
    assert not any(p.requires_grad for p in m.user_encoder.parameters())
    m = applied("pfeiffer")
    assert adapters(m) == [f"item_encoder.backbone.encoder.layer.{i}.output.peft_adapter" for i in range(L)] + [
        f"user_encoder.blocks.{i}.ffn.peft_adapter" for i in range(B)]
    m = applied("pfeiffer", position="mha", towers="user")  # the Pfeiffer form after attention
    assert adapters(m) == [f"user_encoder.blocks.{i}.attn.peft_adapter" for i in range(B)]
    assert not any(p.requires_grad for p in m.item_encoder.backbone.parameters())
    assert m.peft_config["positions"] == ["mha"] and "position" not in m.peft_config
    m = applied("houlsby", layers={"item": [0], "user": "all"}, positions="ffn")
    assert adapters(m) == ["item_encoder.backbone.encoder.layer.0.output.peft_adapter"] + [
        f"user_encoder.blocks.{i}.ffn.peft_adapter" for i in range(B)]
    m = applied("lora", targets=["key", "ffn_out"], layers=[0])
    lora = sorted({n.split(".lora_")[0] for n, p in m.named_parameters() if p.requires_grad and "lora_" in n})
    assert lora == ["item_encoder.backbone.encoder.layer.0.attention.self.key",
                    "item_encoder.backbone.encoder.layer.0.output.dense",
                    "user_encoder.blocks.0.attn.key", "user_encoder.blocks.0.ffn.fc2"]


def test_tune_layernorm_on_an_adapter_method():
    m = applied("houlsby", tune_layernorm=True, towers="user")
    tuned = {n for n, p in m.named_parameters() if p.requires_grad and "peft_" not in n
             and not n.startswith("item_encoder.project")}
    assert tuned == m.peft_tuned == {f"user_encoder.{ln}.{w}" for ln in
                                     ["ln_in", *[f"blocks.{i}.{x}" for i in range(B) for x in ("ln_attn", "ln_ffn")]]
                                     for w in ("weight", "bias")}


def test_tune_layernorm_on_kadapter_covers_the_whole_towers():
    m = applied("kadapter", tune_layernorm=True)  # its `layers` are the layers it reads
    n = sum(p.numel() for name, p in m.named_parameters() if name in m.peft_tuned)
    assert n == sum(EXPECTED["layernorm"])


def test_id_item_encoder_has_only_the_user_tower():
    m = make_model(item="id")
    s = peft.apply(m, "houlsby", **SMALL)
    assert s["towers"]["user"]["trainable"] == EXPECTED["houlsby"][1]
    assert s["towers"]["other"]["trainable"] == 21 * D  # the ID table always trains
    assert s["towers"]["item"] == {"trainable": 0, "total": 0}
    with pytest.raises(ConfigError, match="no item tower"):
        peft.apply(make_model(item="id"), "prompt")


def side_chain(hidden, m, blocks):  # one iisan side chain: a gate + a residual bottleneck per block
    return blocks + blocks * (lin(hidden, m) + lin(m, hidden))


# reads layers [0, 1, 2] / [0, 2]: one block per state read, the embeddings' included (IISAN)
@pytest.mark.parametrize("stride, blocks", [(1, 3), (2, 2)])
def test_iisan_trainable_set(stride, blocks):
    model = make_model()
    s = peft.apply(model, "iisan", bottleneck=MI, layer_stride=stride)
    # one text chain, then fc (H -> H), the item head's Linear (trains) and the fusion (D -> D)
    side = side_chain(H, MI, blocks) + lin(H, H) + lin(D, D)
    assert len(model.item_encoder.peft_side.intra["text"].blocks) == blocks
    assert model.item_encoder.peft_side.inter is None  # one modality
    assert s["towers"]["item"] == {"trainable": 0, "total": BERT_TOTAL}
    assert s["towers"]["user"] == {"trainable": SASREC_TOTAL, "total": SASREC_TOTAL}
    assert s["towers"]["other"] == {"trainable": side + HEAD, "total": side + HEAD}
    assert s["inserted"] == side and model.peft_tuned == set()
    train = {n for n, p in model.named_parameters() if p.requires_grad}
    assert train == ({n for n, _ in model.named_parameters() if n.startswith("item_encoder.peft_side.")}
                     | {"item_encoder.project.0.weight", "item_encoder.project.0.bias"}
                     | {n for n, _ in model.user_encoder.named_parameters(prefix="user_encoder")})
    m = make_model()  # the item side only: the user encoder stays frozen
    s = peft.apply(m, "iisan", towers=["item"], bottleneck=MI, layer_stride=stride)
    assert s["towers"]["user"]["trainable"] == 0 and s["trainable"] == side + HEAD
    with pytest.raises(ConfigError, match="towers must include item"):
        peft.apply(make_model(), "iisan", towers=["user"])
    with pytest.raises(ConfigError, match="needs a pretrained item backbone"):
        peft.apply(make_model(item="id"), "iisan")


# ---------------------------------------------------------------------------------------------
# gradients and optimisation

# methods exempt from "two steps change exactly the trainable parameters, each with a gradient"
ONE_STEP_EXEMPT: dict[str, str] = {}
# methods that train nothing inside some layer of a tower (all others train in every layer of both)
NOT_PER_LAYER = {
    "frozen": "trains nothing in the towers",
    "kadapter": "a side transformer reading some layers' outputs: nothing inside the layers",
    "prompt": "soft prompt tokens at the item encoder's input only",
    "iisan": "side networks outside the item backbone: nothing trains inside its layers "
             "(the user encoder trains in full)",
}


@pytest.mark.parametrize("method", matrix(ONE_STEP_EXEMPT))
def test_one_step_changes_only_trainable_parameters(method):
    model = applied(method)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=1e-2)
    for step in range(2):  # zero-initialised parts (LoRA B, combine) open the path in step 1
        opt.zero_grad()
        loss_of(model).backward()
        if step == 1:
            no_grad = [n for n, p in model.named_parameters()
                       if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
            assert no_grad == [], f"{method}: no gradient reaches {no_grad}"
        opt.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == p.requires_grad, f"{method}: {n} changed={changed}"
    if method not in NOT_PER_LAYER:  # something trains in every layer of both towers
        for prefix, n_layers in (("item_encoder.backbone.encoder.layer", L), ("user_encoder.blocks", B)):
            for i in range(n_layers):
                assert any(n.startswith(f"{prefix}.{i}.") and p.requires_grad and p.grad.abs().sum() > 0
                           for n, p in model.named_parameters()), (method, prefix, i)


# ---------------------------------------------------------------------------------------------
# method-specific behaviour

def test_serial_and_parallel_formulas_on_a_sasrec_block():
    torch.manual_seed(0)
    x = torch.randn(3, S, D)
    bias = torch.zeros(1, 1, S, S)
    ref = make_model().user_encoder.blocks[0]  # the same pretrained block, without adapters
    for insertion in ("serial", "parallel"):
        m = applied("houlsby", insertion=insertion, towers="user", init_std=0.3)
        blk = m.user_encoder.blocks[0]
        a, f = blk.attn.peft_adapter, blk.ffn.peft_adapter
        with torch.no_grad():
            if insertion == "serial":   # A(z) = z + up(act(down(z))) on the projection's output
                assert a.skip and f.skip
                h = ref.ln_attn(x + a(ref.attn(x, bias)))
                want = ref.ln_ffn(h + f(ref.ffn(h)))
            else:                       # h = sub(x) + f(x): the residual is added once, by the host
                assert not a.skip and not f.skip
                h = ref.ln_attn(x + ref.attn(x, bias) + a(x))
                want = ref.ln_ffn(h + ref.ffn(h) + f(h))
            got = blk(x, bias)
            assert not torch.allclose(got, ref(x, bias), atol=1e-3)
        assert torch.allclose(got, want, atol=1e-6), insertion
        with torch.no_grad():  # zero up: the host function exactly
            for ad in (a, f):
                ad.up.weight.zero_()
            assert torch.equal(blk(x, bias), ref(x, bias))


def test_kadapter_user_side_is_causal_and_item_side_respects_padding():
    m = applied("kadapter", towers="both")
    with torch.no_grad():  # open the side path: combine's side block away from zero
        for kad in (m.item_encoder.backbone.peft_kadapter, m.user_encoder.peft_kadapter):
            kad.combine.weight.normal_(std=0.2)
    content, seq, mask = inputs()
    with torch.no_grad():
        out = m.user_encoder(seq, mask)
        seq2 = seq.clone()
        seq2[:, -1] = torch.randn(seq.shape[0], D)  # change only the last item
        out2 = m.user_encoder(seq2, mask)
        # earlier real positions never see it (up to SDPA's float rounding, as the host itself;
        # padded positions attend to everything, as in the host, and are never used)
        real = mask[:, :-1]
        assert torch.allclose(out[:, :-1][real], out2[:, :-1][real], atol=1e-5)
        assert not torch.allclose(out[:, -1], out2[:, -1], atol=1e-2)
        items = m.encode_items(content)
        ids2 = content["input_ids"].clone()
        ids2[content["attention_mask"] == 0] = 7  # different tokens under the padding mask
        assert torch.allclose(m.encode_items({**content, "input_ids": ids2}), items, atol=1e-6)
    kad = m.user_encoder.peft_kadapter
    assert kad.causal and not m.item_encoder.backbone.peft_kadapter.causal
    assert kad._hidden == {} and kad._mask is None  # nothing kept between calls


def test_compacter_phm_weight_is_a_sum_of_kronecker_products():
    m = applied("compacter")
    down = m.item_encoder.backbone.encoder.layer[0].attention.output.peft_adapter.down
    rules = m.item_encoder.backbone.peft_phm_rules.weight
    assert down.rules is rules  # shared by the tower, registered once
    want = sum(torch.kron(rules[i], down.s[i] @ down.t[i]) for i in range(4))
    assert torch.allclose(down.weight(), want, atol=1e-7)
    names = [n for n, _ in m.named_parameters() if "phm_rules" in n]
    assert names == ["item_encoder.backbone.peft_phm_rules.weight", "user_encoder.peft_phm_rules.weight"]
    up = m.item_encoder.backbone.encoder.layer[0].attention.output.peft_adapter.up
    assert torch.count_nonzero(up.weight()) == 0  # the up projection starts at zero


def test_lora_keeps_pretrained_weights_and_merges():
    base = make_model()
    q = base.item_encoder.backbone.encoder.layer[0].attention.self.query.weight.detach().clone()
    m = make_model()
    peft.apply(m, "lora", **OPTIONS["lora"])
    wrapped = m.item_encoder.backbone.encoder.layer[0].attention.self.query
    assert torch.equal(wrapped.base_layer.weight, q)  # wrapped, not re-initialised
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    unmerged = outputs(m)
    assert not torch.equal(unmerged[0], outputs(base)[0])
    assert peft.merge(m) == 2 * (L + B)
    merged = outputs(m)
    for a, b in zip(unmerged, merged):
        assert torch.allclose(a, b, atol=1e-5)
    peft.unmerge(m)
    peft.merge(m, unload=True)
    names = {n for n, _ in m.named_parameters()}
    assert names == {n for n, _ in base.named_parameters()}  # plain Linear layers again
    for a, b in zip(unmerged, outputs(m)):
        assert torch.allclose(a, b, atol=1e-5)


def test_text_prompt_keeps_the_whole_title_after_cls():
    m = applied("prompt", n_tokens=3)
    bb = m.item_encoder.backbone
    seen = {}
    h = bb.embeddings.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(kwargs), with_kwargs=True)
    content, _, _ = inputs()
    out_len = {}
    h2 = bb.register_forward_hook(lambda mod, a, o: out_len.update(n=o.last_hidden_state.shape[1]))
    with torch.no_grad():
        m.encode_items(content)
    h.remove()
    h2.remove()
    emb = seen["inputs_embeds"]
    ids = content["input_ids"]
    words = bb.embeddings.word_embeddings.weight
    assert emb.shape[1] == ids.shape[1] + 3
    assert torch.equal(emb[:, 0], words[ids[:, 0]])                  # [CLS]
    assert torch.equal(emb[:, 1:4], bb.peft_prompt.weight.expand(len(ids), -1, -1))
    assert torch.equal(emb[:, 4:], words[ids[:, 1:]])                # every title token kept
    assert out_len["n"] == ids.shape[1]                              # prompt positions removed again
    vocab_rows = {tuple(r.tolist()) for r in words}
    assert all(tuple(r.tolist()) in vocab_rows for r in bb.peft_prompt.weight)  # init from vocabulary


@pytest.mark.parametrize("item", ["vit", "vit_mae"])
def test_image_prompt_appends_patch_tokens(item):
    m = applied("prompt", item=item, n_tokens=2)
    bb = m.item_encoder.backbone
    lengths = {}
    bb.embeddings.register_forward_hook(
        lambda mod, a, o: lengths.update(emb=(o[0] if isinstance(o, tuple) else o).shape[1]))
    bb.register_forward_hook(lambda mod, a, o: lengths.update(out=o.last_hidden_state.shape[1]))
    base = outputs(make_model(item=item), item)[0]
    m.train()
    loss_of(m, item).backward()
    assert bb.peft_prompt.weight.grad.abs().sum() > 0
    got = outputs(m, item)[0]
    assert lengths == {"emb": 1 + 4 + 2, "out": 1 + 4}  # CLS + 4 patches (+ 2 prompts inside)
    assert got.shape == base.shape and not torch.equal(got, base)


def test_vit_site_names():
    for item in ("vit", "vit_mae"):
        m = applied("houlsby", item=item)
        names = sorted(n for n, _ in m.named_modules() if n.endswith("peft_adapter") and "backbone" in n)
        assert names == [f"item_encoder.backbone.layers.{i}.{s}.peft_adapter"
                         for i in range(L) for s in ("attention", "mlp")]
        m = applied("lora", item=item)
        assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in m.named_parameters()
                if "lora_" in n and "backbone" in n} == {"q_proj", "v_proj"}


def test_deepcopy_keeps_hooks_bound_to_the_copy():
    m = applied("houlsby")
    before = outputs(m)
    c = copy.deepcopy(m)
    with torch.no_grad():
        for n, p in c.named_parameters():
            if "peft_adapter.up.weight" in n:
                p.add_(0.5)
    assert not torch.equal(outputs(c)[0], before[0])
    assert all(torch.equal(a, b) for a, b in zip(outputs(m), before))


# ---------------------------------------------------------------------------------------------
# adapter files and domains

# methods exempt from "an adapter file reproduces the trained model's outputs on the backbone"
SAVE_LOAD_EXEMPT: dict[str, str] = {}
# methods whose adapter file is not under half the model's size
LARGE_ADAPTER_FILE = {"full": "trains every parameter: the adapter file is the whole model"}


@pytest.mark.parametrize("method", matrix(SAVE_LOAD_EXEMPT))
def test_adapter_only_save_then_load_reproduces_outputs(tmp_path, method):
    trained = applied(method)
    perturb(trained, 1)  # stands for training
    want = outputs(trained)
    info = peft.save_adapter(trained, tmp_path / "a.safetensors")
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert keys == {n for n, p in trained.named_parameters() if p.requires_grad}
    assert info["adapter_params"] == peft.summary(trained)["trainable"]
    assert info["adapter_bytes"] == (tmp_path / "a.safetensors").stat().st_size
    if method not in LARGE_ADAPTER_FILE:
        assert info["adapter_bytes"] < info["model_bytes"] / 2
    fresh = make_model()  # the backbone again, no PEFT yet: the file's config is applied
    cfg = peft.load_adapter(fresh, tmp_path / "a.safetensors")
    assert cfg == trained.peft_config == fresh.peft_config
    for a, b in zip(outputs(fresh), want):
        assert torch.equal(a, b), method


def test_adapter_bank_switches_domains_without_reloading_the_backbone(tmp_path):
    files, want = {}, {}
    for domain, seed in (("books", 1), ("games", 2)):
        m = applied("houlsby", tune_layernorm=True)
        perturb(m, seed)
        want[domain] = outputs(m)
        files[domain] = tmp_path / f"{domain}.safetensors"
        peft.save_adapter(m, files[domain])
    model = make_model()
    backbone_weight = model.item_encoder.backbone.embeddings.word_embeddings.weight
    bank = peft.AdapterBank(model)
    for domain, f in files.items():
        bank.add(domain, f)
    assert bank.names == ["books", "games"] and bank.active == "books"
    for domain in ("books", "games", "books", "games"):
        bank.activate(domain)
        for a, b in zip(outputs(model), want[domain]):
            assert torch.equal(a, b), domain
    assert model.item_encoder.backbone.embeddings.word_embeddings.weight is backbone_weight
    # load_adapter swaps in place too, on a model that already has the method
    peft.load_adapter(model, files["books"])
    assert all(torch.equal(a, b) for a, b in zip(outputs(model), want["books"]))


def test_load_adapter_refuses_what_does_not_fit(tmp_path):
    m = applied("houlsby")
    peft.save_adapter(m, tmp_path / "h.safetensors")
    with pytest.raises(CheckpointError, match="another PEFT config"):
        peft.load_adapter(applied("houlsby", item_bottleneck=16), tmp_path / "h.safetensors")
    with pytest.raises(CheckpointError, match="item tower"):
        peft.load_adapter(make_model(item="roberta"), tmp_path / "h.safetensors")
    from adapter4rec.runtime.io import save_weights, trainable_state

    save_weights(trainable_state(m), tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="carries no PEFT config"):
        peft.load_adapter(make_model(), tmp_path / "plain.safetensors")
    fresh = make_model()
    peft.load_adapter(fresh, tmp_path / "plain.safetensors", config=m.peft_config)
    assert all(torch.equal(a, b) for a, b in zip(outputs(fresh), outputs(m)))
    with pytest.raises(CheckpointError, match="no PEFT method applied"):
        peft.save_adapter(make_model(), tmp_path / "x.safetensors")


# ---------------------------------------------------------------------------------------------
# the matrix is complete: every registered method runs each property test, or is exempt from it

MATRIX = {  # each property test over `method` and its exemption table
    test_docs_list_every_method_and_option: NOT_IN_PEFT_DOCS,
    test_inserting_changes_no_output_at_init: NOT_IDENTITY,
    test_identity_on_other_backbones: NOT_IDENTITY,
    test_trainable_counts_per_tower: COUNTS_DO_NOT_APPLY,
    test_trainable_names_are_the_intended_ones: NAMES_DO_NOT_APPLY,
    test_one_step_changes_only_trainable_parameters: ONE_STEP_EXEMPT,
    test_adapter_only_save_then_load_reproduces_outputs: SAVE_LOAD_EXEMPT,
}
PARTIAL = {  # exemptions from one assertion inside a property test: table -> that test
    "NOT_ONLY_INSERTED": (NOT_ONLY_INSERTED, test_trainable_counts_per_tower),
    "NOT_PER_LAYER": (NOT_PER_LAYER, test_one_step_changes_only_trainable_parameters),
    "LARGE_ADAPTER_FILE": (LARGE_ADAPTER_FILE, test_adapter_only_save_then_load_reproduces_outputs),
}


def method_params(test):
    """{method: skip reason, or None where it runs} of a test's ``method`` parametrisation (None
    when the test is not parametrised over methods)."""
    for mark in getattr(test, "pytestmark", []):
        if mark.name == "parametrize" and mark.args[0] == "method":
            out = {}
            for p in mark.args[1]:
                value = p.values[0] if hasattr(p, "values") else p
                skips = [m.kwargs.get("reason") for m in getattr(p, "marks", ()) if m.name == "skip"]
                out.setdefault(value, []).append(skips[0] if skips else None)
            return out
    return None


def matrix_problems(registered, matrix=MATRIX, partial=PARTIAL) -> list[str]:
    registered = set(registered)
    problems = []
    for test, exempt in matrix.items():
        name, params = test.__name__, method_params(test)
        if params is None:
            problems.append(f"{name}: not parametrised over `method`")
            continue
        for m in sorted(registered - set(params)):
            problems.append(f"{name}: registered method {m!r} neither runs nor is exempt")
        for m in sorted(set(params) - registered):
            problems.append(f"{name}: runs {m!r}, which is not registered")
        for m in sorted(set(exempt) - registered):
            problems.append(f"{name}: stale exemption {m!r} (not a registered method)")
        for m, reasons in params.items():
            if len(reasons) > 1:
                problems.append(f"{name}: {m!r} parametrised {len(reasons)} times")
            want = f"exempt: {exempt[m]}" if m in exempt else None
            if reasons[0] != want:
                problems.append(f"{name}: {m!r} skip reason {reasons[0]!r}, its table says {want!r}")
        for m, reason in exempt.items():
            if not (isinstance(reason, str) and reason.strip()):
                problems.append(f"{name}: exemption {m!r} gives no reason")
    for table_name, (table, test) in partial.items():
        runs = {m for m, r in (method_params(test) or {}).items() if r == [None]}
        for m in sorted(set(table) - registered):
            problems.append(f"{table_name}: stale exemption {m!r} (not a registered method)")
        for m in sorted(set(table) & registered - runs):
            problems.append(f"{table_name}: {m!r} is exempt from the whole of {test.__name__}")
    return problems


def test_matrix_covers_every_registered_method():
    registered = peft.available()
    assert REGISTERED == registered  # what the matrix was built from at import
    assert matrix_problems(registered) == []
    # every test of this module parametrised over methods is a property test of the matrix
    over_methods = {n for n, f in globals().items() if n.startswith("test_") and callable(f)
                    and method_params(f) is not None}
    assert over_methods == {t.__name__ for t in MATRIX}
    # every method that runs has what its property tests look up
    assert set(OPTIONS) == set(registered), "OPTIONS: the options each registered method is tested with"

    def runs(test):
        return {m for m, r in method_params(test).items() if r == [None]}

    assert set(IDENTITY) == runs(test_inserting_changes_no_output_at_init)
    assert set(IDENTITY) == runs(test_identity_on_other_backbones)
    assert set(EXPECTED) == runs(test_trainable_counts_per_tower)


def test_matrix_guard_catches_a_new_method_and_a_stale_exemption():
    problems = matrix_problems([*REGISTERED, "mine"])  # registered after this module was imported
    for test in MATRIX:
        assert f"{test.__name__}: registered method 'mine' neither runs nor is exempt" in problems
    gone = {**MATRIX, test_one_step_changes_only_trainable_parameters: {"gone": "was removed"}}
    assert ("test_one_step_changes_only_trainable_parameters: stale exemption 'gone' (not a "
            "registered method)") in matrix_problems(REGISTERED, matrix=gone)
    partial = {"NOT_PER_LAYER": ({**NOT_PER_LAYER, "gone": "x"},
                                 test_one_step_changes_only_trainable_parameters)}
    assert matrix_problems(REGISTERED, partial=partial) == [
        "NOT_PER_LAYER: stale exemption 'gone' (not a registered method)"]
