"""The geometry of each backbone family: a small site map per family (as AdapterHub's model
interfaces) saying where its layers are and, in each layer, where PEFT methods go.

Every path is relative to one transformer layer (``layers``: the ModuleList of layers). Methods only
wrap or hook these modules, after the pretrained weights are loaded; they never replace a
pretrained layer with a freshly initialised one, and no transformers code is copied.

A sublayer (``mha``, ``ffn``) computes ``out = LN(x + drop(sub(.)))`` (post-LN: BERT, SASRec) or
``out = x + drop(sub(LN(x)))`` (pre-LN: ViT), and is described by
- ``output``: its output projection (a Linear). Adapters are registered beside it (in its parent
  module), and its forward hook tells the dropout hook which site's output comes through next;
- ``dropout``: the host's dropout on the residual branch. Bottleneck adapters transform *its*
  output (after the dropout, before the residual add and LayerNorm), as AdapterHub, Houlsby's
  adapter-bert and the reference do. ViT has one dropout module per layer, called after both
  sublayers: the ``output`` hook says which of the two is passing;
- ``input``: (module, positional index, keyword) of the call receiving the sublayer's input (what
  the sublayer reads: a parallel adapter reads it too). BERT: the ``input_tensor`` argument of
  ``attention.output`` / ``output``; ViT and SASRec: the first argument of the attention / MLP
  module (in ViT that is the LayerNorm'ed state);
- ``residual``: the call receiving ``x``, the residual branch (Pfeiffer reads ``x + drop(sub)``).
  Post-LN it is the sublayer input; in ViT the input of ``layernorm_before`` / ``layernorm_after``;
- ``layernorm``: the host LayerNorm applied after the residual add (post-LN), None for pre-LN.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from .sasrec import SASRec


@dataclass(frozen=True)
class Sublayer:
    output: str
    dropout: str
    input: tuple[str, int, str]
    residual: tuple[str, int, str]
    layernorm: str | None = None


@dataclass(frozen=True)
class SiteMap:
    family: str
    layers: str                               # path of the ModuleList of layers
    sublayers: dict                           # "mha" / "ffn" -> Sublayer
    linears: dict                             # LoRA targets: role -> path in a layer
    prompt: str | None = None                 # "text" (token embeddings) | "patch" (ViT embeddings)
    causal: bool = False                      # does the host mask future positions?


def _site_map(family: str, layers: str, qkv: tuple, attn: Sublayer, ffn: Sublayer, ffn_in: str,
              **kw) -> SiteMap:
    linears = {**dict(zip(("query", "key", "value"), qkv)), "attn_out": attn.output,
               "ffn_in": ffn_in, "ffn_out": ffn.output}
    return SiteMap(family, layers, {"mha": attn, "ffn": ffn}, linears, **kw)


def _post_ln(output: str, dropout: str, input: tuple, layernorm: str) -> Sublayer:
    """Post-LN: the sublayer's input is the residual branch."""
    return Sublayer(output, dropout, input, input, layernorm)


BERT = _site_map(
    "bert", "encoder.layer", prompt="text",
    qkv=("attention.self.query", "attention.self.key", "attention.self.value"),
    attn=_post_ln("attention.output.dense", "attention.output.dropout",
                  ("attention.output", 1, "input_tensor"), "attention.output.LayerNorm"),
    ffn=_post_ln("output.dense", "output.dropout", ("output", 1, "input_tensor"), "output.LayerNorm"),
    ffn_in="intermediate.dense")
# transformers 5 names; pre-LN, one `dropout` per layer after both sublayers (ViTLayer.forward)
VIT = _site_map(
    "vit", "layers", prompt="patch",
    qkv=("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    attn=Sublayer("attention.o_proj", "dropout", ("attention", 0, "hidden_states"),
                  ("layernorm_before", 0, "input")),
    ffn=Sublayer("mlp.fc2", "dropout", ("mlp", 0, "hidden_states"), ("layernorm_after", 0, "input")),
    ffn_in="mlp.fc1")
# our user encoder (adapter4rec/encoders/sasrec.py), post-LN and causal
SASREC = _site_map(
    "sasrec", "blocks", causal=True, qkv=("attn.query", "attn.key", "attn.value"),
    attn=_post_ln("attn.out", "attn_drop", ("attn", 0, "x"), "ln_attn"),
    ffn=_post_ln("ffn.fc2", "ffn_drop", ("ffn", 0, "x"), "ln_ffn"), ffn_in="ffn.fc1")

# transformers ``config.model_type`` -> site map
SITE_MAPS = {"bert": BERT, "roberta": BERT, "vit": VIT, "vit_mae": VIT}


def site_map(module: nn.Module) -> SiteMap:
    if isinstance(module, SASRec):
        return SASREC
    model_type = getattr(getattr(module, "config", None), "model_type", None)
    if model_type in SITE_MAPS:
        return SITE_MAPS[model_type]
    raise ConfigError(f"no PEFT site map for {type(module).__name__} (model_type {model_type!r}); "
                      f"supported: {', '.join(sorted(SITE_MAPS))} and SASRec "
                      "(add one in adapter4rec/encoders/sites.py)")


def layer_list(module: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer layers of ``module`` (a backbone or SASRec)."""
    return module.get_submodule(site_map(module).layers)


__all__ = ["Sublayer", "SiteMap", "BERT", "VIT", "SASREC", "SITE_MAPS", "site_map", "layer_list"]
