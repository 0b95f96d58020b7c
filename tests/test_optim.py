"""Optimiser parameter groups: the roles' learning rates and the weight-decay rule.

The rule (``training/optim.py`` ``param_groups``): ``train.weight_decay`` applies to trainable
weight matrices (2-D and up) only; biases, LayerNorm gains and other 1-D parameters never decay;
embedding tables decay only with ``train.decay_embeddings``. Models: a 2-layer BERT / ViT of width
32 and SASRec of width 16, built in memory from a seed.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from adapter4rec import peft
from adapter4rec.config import Config, load_config
from adapter4rec.encoders.id import IdItemEncoder
from adapter4rec.encoders.sasrec import SASRec
from adapter4rec.encoders.text import TextItemEncoder
from adapter4rec.model import Recommender
from adapter4rec.training.optim import ROLES, make_optimizer, param_groups

H, D = 32, 16
WD = 0.1
OPTIONS = {"full": {}, "layernorm": {}, "bitfit": {}, "houlsby": {"item_bottleneck": 8,
                                                                  "user_bottleneck": 4},
           "lora": {"item_rank": 4, "user_rank": 2}, "prompt": {"n_tokens": 3},
           "compacter": {"item_bottleneck": 8, "user_bottleneck": 4}}


def backbone(item: str, seed: int):
    torch.manual_seed(seed)
    if item == "bert":
        from transformers import BertConfig, BertModel

        return BertModel(BertConfig(vocab_size=100, hidden_size=H, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64,
                                    max_position_embeddings=40, type_vocab_size=2, pad_token_id=0),
                         add_pooling_layer=False)
    from transformers import ViTConfig, ViTModel

    return ViTModel(ViTConfig(hidden_size=H, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, image_size=32, patch_size=16),
                    add_pooling_layer=False)


def model_with(method: str, item: str = "bert", seed: int = 0) -> Recommender:
    if item == "id":
        torch.manual_seed(seed)
        enc = IdItemEncoder(20, D)
    elif item == "bert":
        enc = TextItemEncoder(backbone(item, seed), D)
    else:
        from adapter4rec.encoders.image import ImageItemEncoder

        enc = ImageItemEncoder(backbone(item, seed), D)
    torch.manual_seed(seed + 1)
    model = Recommender(enc, SASRec(D, 6, 2, 2, 0.1), "bce")
    peft.apply(model, method, **OPTIONS[method])
    return model


def config(**train) -> Config:
    cfg = Config()
    cfg.train = dataclasses.replace(cfg.train, **{"weight_decay": WD, **train})
    return cfg


def embedding_names(model) -> set[str]:
    """The embedding tables, named by hand: every nn.Embedding's weight and ViT's cls / position
    parameters (held by ViTEmbeddings itself) and a soft prompt's rows."""
    names = {f"{m}.weight" for m, mod in model.named_modules() if isinstance(mod, nn.Embedding)}
    names |= {n for n, _ in model.named_parameters()
              if n.endswith(("embeddings.cls_token", "embeddings.position_embeddings",
                             "embeddings.mask_token", "peft_prompt.weight"))}
    return names


def decay_of(optimizer) -> dict[str, float]:
    """id(parameter) -> the weight decay of the optimiser group that holds it (each once)."""
    groups = {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            assert id(p) not in groups, "a parameter in two groups"
            groups[id(p)] = g["weight_decay"]
    return groups


CASES = [("bert", m) for m in OPTIONS] + [("vit", "full"), ("vit", "layernorm"), ("id", "full")]


@pytest.mark.parametrize("decay_embeddings", [False, True])
@pytest.mark.parametrize("item,method", CASES)
def test_decay_only_weight_matrices(item, method, decay_embeddings):
    """Every 1-D trainable parameter (biases, LayerNorm gains, iisan-style gates) sits in a group
    with weight_decay 0; every other trainable matrix has the configured decay, embedding tables
    only with train.decay_embeddings."""
    model = model_with(method, item)
    cfg = config(decay_embeddings=decay_embeddings)
    opt = make_optimizer(model, cfg)
    wd = decay_of(opt)
    embeddings = embedding_names(model)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(wd) == {id(p) for p in trainable.values()}  # every trainable parameter, once
    checked_embedding = False
    for n, p in trainable.items():
        if p.dim() < 2:
            want = 0.0
        elif n in embeddings:
            want, checked_embedding = (WD if decay_embeddings else 0.0), True
        else:
            want = WD
        assert wd[id(p)] == want, (n, tuple(p.shape), wd[id(p)])
    assert any(p.dim() >= 2 for p in trainable.values())  # the rule has matrices to decay
    if method == "full":  # the ID table / BERT's tables / ViT's cls and positions are trained
        assert checked_embedding


def test_tuned_layernorm_gains_and_bitfit_biases_are_not_decayed():
    for method, tuned in (("layernorm", ".LayerNorm.weight"), ("bitfit", ".bias")):
        model = model_with(method)
        opt = make_optimizer(model, config())
        wd = decay_of(opt)
        names = [n for n in model.peft_tuned if n.endswith(tuned)]
        assert names, method
        params = dict(model.named_parameters())
        assert all(wd[id(params[n])] == 0.0 for n in names), method


@pytest.mark.parametrize("optimizer", ["adamw", "adam"])
def test_zero_gradient_step_leaves_layernorm_gains_and_biases_unchanged(optimizer):
    """With weight_decay 0.1 and a zero gradient, one step moves only decayed matrices (shrunk by
    exactly lr x wd under AdamW); LayerNorm gains and biases stay bit for bit."""
    model = model_with("layernorm")
    cfg = config(optimizer=optimizer, lr=1e-2, lr_peft=1e-2, lr_backbone=1e-2)
    opt = make_optimizer(model, cfg)
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items() if p.requires_grad}
    for p in params.values():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    opt.step()
    gains = [n for n in model.peft_tuned if n.endswith("LayerNorm.weight")]
    assert gains
    for n, old in before.items():
        if old.dim() < 2:
            assert torch.equal(params[n], old), n
    # non-vacuous: the decay is on, and applied to a trainable weight matrix
    w = next(n for n in before if params[n].dim() >= 2 and n not in embedding_names(model))
    if optimizer == "adamw":
        assert torch.allclose(params[w], before[w] * (1 - 1e-2 * WD), rtol=0, atol=1e-7), w
    assert not torch.equal(params[w], before[w]), w


def test_groups_keep_their_roles_and_learning_rates():
    model = model_with("layernorm")
    cfg = config(lr=1e-3, lr_peft=2e-3, lr_backbone=3e-5)
    groups = param_groups(model, cfg)
    lrs = {"backbone": 3e-5, "peft": 2e-3, "rest": 1e-3}
    assert all(g["name"] in ROLES and g["lr"] == lrs[g["name"]] for g in groups)
    assert all(g["weight_decay"] == (WD if g["decay"] else 0.0) for g in groups)
    by_id = {id(p): g["name"] for g in groups for p in g["params"]}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert id(p) not in by_id, n
        elif n in model.peft_tuned:
            assert by_id[id(p)] == "peft", n
        elif not n.startswith("item_encoder.backbone."):
            assert by_id[id(p)] == "rest", n
    # roles in a fixed order, the decayed half of a role first
    order = [(ROLES.index(g["name"]), not g["decay"]) for g in groups]
    assert order == sorted(order) and len(set(order)) == len(order)


def test_group_structure_is_deterministic_and_resume_loads():
    """Two builds of the same model give the same groups, whatever weight_decay is, so an
    optimiser state saved by one loads into the other (checkpoint resume)."""
    def structure(groups):
        return [(g["name"], g["decay"], [tuple(p.shape) for p in g["params"]]) for g in groups]

    a, b = model_with("houlsby"), model_with("houlsby")
    assert structure(param_groups(a, config())) == \
        structure(param_groups(b, config(weight_decay=0.0)))
    opt_a = make_optimizer(a, config())
    for p in a.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    opt_a.step()
    opt_b = make_optimizer(b, config())
    opt_b.load_state_dict(opt_a.state_dict())
    assert [(g["name"], g["decay"], g["weight_decay"]) for g in opt_b.param_groups] == \
        [(g["name"], g["decay"], g["weight_decay"]) for g in opt_a.param_groups]


def test_decay_embeddings_is_a_config_field():
    cfg = load_config(overrides=["model.item_encoder=id", "train.decay_embeddings=true"])
    assert cfg.train.decay_embeddings is True
    assert Config().train.decay_embeddings is False
