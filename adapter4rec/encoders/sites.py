"""The geometry of each backbone family: a small site map per family (as AdapterHub's model
interfaces) saying where its layers are and, in each layer, where PEFT methods go.

Every path is relative to one transformer layer (``layers``: the ModuleList of layers). Methods only
wrap or hook these modules, after the pretrained weights are loaded; they never replace a
pretrained layer with a freshly initialised one, and no transformers code is copied.

A sublayer (``mha``, ``ffn``) is described by
- ``output``: its output projection (a Linear) -- serial adapters transform this module's output,
  i.e. after the projection and before the host's dropout, residual and LayerNorm;
- ``input``: (module, positional index, keyword) -- the module whose call receives the sublayer's
  input ``x`` (parallel adapters add ``f(x)`` to the output projection's output). For BERT the
  input is the ``input_tensor`` argument of ``attention.output`` / ``output`` (the residual branch),
  for ViT and SASRec the first argument of the attention / MLP module.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from .sasrec import SASRec


@dataclass(frozen=True)
class Sublayer:
    output: str
    input: tuple[str, int, str]


@dataclass(frozen=True)
class SiteMap:
    family: str
    layers: str                               # path of the ModuleList of layers
    sublayers: dict                           # "mha" / "ffn" -> Sublayer
    linears: dict                             # LoRA targets: role -> path in a layer
    prompt: str | None = None                 # "text" (token embeddings) | "patch" (ViT embeddings)
    causal: bool = False                      # does the host mask future positions?


def _site_map(family: str, layers: str, qkv: tuple, attn: tuple, ffn: tuple, ffn_in: str,
              **kw) -> SiteMap:
    """``attn`` / ``ffn``: (output projection, (input module, positional index, keyword))."""
    linears = {**dict(zip(("query", "key", "value"), qkv)), "attn_out": attn[0], "ffn_in": ffn_in,
               "ffn_out": ffn[0]}
    return SiteMap(family, layers, {"mha": Sublayer(*attn), "ffn": Sublayer(*ffn)}, linears, **kw)


BERT = _site_map("bert", "encoder.layer", prompt="text",
                 qkv=("attention.self.query", "attention.self.key", "attention.self.value"),
                 attn=("attention.output.dense", ("attention.output", 1, "input_tensor")),
                 ffn=("output.dense", ("output", 1, "input_tensor")), ffn_in="intermediate.dense")
# transformers 5 names (pre-LN: the sublayer input is the LayerNorm'ed hidden state)
VIT = _site_map("vit", "layers", prompt="patch",
                qkv=("attention.q_proj", "attention.k_proj", "attention.v_proj"),
                attn=("attention.o_proj", ("attention", 0, "hidden_states")),
                ffn=("mlp.fc2", ("mlp", 0, "hidden_states")), ffn_in="mlp.fc1")
# our user encoder (adapter4rec/encoders/sasrec.py), post-LN and causal
SASREC = _site_map("sasrec", "blocks", causal=True, qkv=("attn.query", "attn.key", "attn.value"),
                   attn=("attn.out", ("attn", 0, "x")), ffn=("ffn.fc2", ("ffn", 0, "x")),
                   ffn_in="ffn.fc1")

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
