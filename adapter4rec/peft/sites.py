"""Where PEFT methods go in each backbone family: a small site map per family (as AdapterHub's model
interfaces), and the two towers of a recommender.

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


BERT = SiteMap(
    family="bert",
    layers="encoder.layer",
    sublayers={"mha": Sublayer("attention.output.dense", ("attention.output", 1, "input_tensor")),
               "ffn": Sublayer("output.dense", ("output", 1, "input_tensor"))},
    linears={"query": "attention.self.query", "key": "attention.self.key",
             "value": "attention.self.value", "attn_out": "attention.output.dense",
             "ffn_in": "intermediate.dense", "ffn_out": "output.dense"},
    prompt="text",
)

# transformers 5 names (pre-LN: the sublayer input is the LayerNorm'ed hidden state)
VIT = SiteMap(
    family="vit",
    layers="layers",
    sublayers={"mha": Sublayer("attention.o_proj", ("attention", 0, "hidden_states")),
               "ffn": Sublayer("mlp.fc2", ("mlp", 0, "hidden_states"))},
    linears={"query": "attention.q_proj", "key": "attention.k_proj", "value": "attention.v_proj",
             "attn_out": "attention.o_proj", "ffn_in": "mlp.fc1", "ffn_out": "mlp.fc2"},
    prompt="patch",
)

# our user encoder (adapter4rec/encoders/sasrec.py), post-LN and causal
SASREC = SiteMap(
    family="sasrec",
    layers="blocks",
    sublayers={"mha": Sublayer("attn.out", ("attn", 0, "x")),
               "ffn": Sublayer("ffn.fc2", ("ffn", 0, "x"))},
    linears={"query": "attn.query", "key": "attn.key", "value": "attn.value",
             "attn_out": "attn.out", "ffn_in": "ffn.fc1", "ffn_out": "ffn.fc2"},
    causal=True,
)

# transformers ``config.model_type`` -> site map
SITE_MAPS = {"bert": BERT, "roberta": BERT, "vit": VIT, "vit_mae": VIT}


def site_map(module: nn.Module) -> SiteMap:
    from ..encoders.sasrec import SASRec

    if isinstance(module, SASRec):
        return SASREC
    model_type = getattr(getattr(module, "config", None), "model_type", None)
    if model_type in SITE_MAPS:
        return SITE_MAPS[model_type]
    raise ConfigError(f"no PEFT site map for {type(module).__name__} (model_type {model_type!r}); "
                      f"supported: {', '.join(sorted(SITE_MAPS))} and SASRec "
                      "(add one in adapter4rec/peft/sites.py)")


@dataclass
class Tower:
    """One tower of a recommender: ``item`` (the pretrained item backbone) or ``user`` (SASRec)."""

    name: str
    prefix: str            # parameter-name prefix in the recommender, with the trailing dot
    module: nn.Module

    @property
    def sites(self) -> SiteMap:
        return site_map(self.module)

    @property
    def hidden(self) -> int:
        config = getattr(self.module, "config", None)
        return config.hidden_size if config is not None else self.module.d

    @property
    def layer_list(self) -> nn.ModuleList:
        return self.module.get_submodule(self.sites.layers)

    def layer_name(self, i: int) -> str:
        return f"{self.sites.layers}.{i}"

    def select_layers(self, spec) -> list[int]:
        """``all`` or a list of indices (negative from the end) -> sorted unique indices."""
        if isinstance(spec, dict):
            spec = spec.get(self.name, "all")
        n = len(self.layer_list)
        if spec == "all":
            return list(range(n))
        out = set()
        for i in spec:
            if not -n <= i < n:
                raise ConfigError(f"peft.options.layers: layer {i} does not exist in the {self.name} "
                                  f"tower ({n} layers: 0..{n - 1}, or -1..-{n})")
            out.add(i % n)
        return sorted(out)

    def parameter_names(self) -> list[str]:
        return [self.prefix + n for n, _ in self.module.named_parameters()]


def towers(model: nn.Module) -> dict[str, Tower]:
    """The towers ``model`` has: ``item`` when its item encoder has a backbone, ``user`` always."""
    out = {}
    backbone = getattr(getattr(model, "item_encoder", None), "backbone", None)
    if backbone is not None:
        out["item"] = Tower("item", "item_encoder.backbone.", backbone)
    user = getattr(model, "user_encoder", None)
    if user is not None:
        out["user"] = Tower("user", "user_encoder.", user)
    return out


def selected(model: nn.Module, names: list[str], method: str) -> dict[str, Tower]:
    """The towers named in ``towers`` that the model has; none of them -> ConfigError."""
    have = towers(model)
    chosen = {n: have[n] for n in names if n in have}
    if not chosen:
        raise ConfigError(f"peft method '{method}': the model has no {' or '.join(names)} tower "
                          f"(it has: {', '.join(have) or 'none'}); an ID item encoder has no "
                          "pretrained item backbone")
    return chosen


def tower_of(name: str) -> str:
    """``item``, ``user`` or ``other`` for a parameter name of a recommender."""
    if name.startswith("item_encoder.backbone."):
        return "item"
    if name.startswith("user_encoder."):
        return "user"
    return "other"


__all__ = ["Sublayer", "SiteMap", "BERT", "VIT", "SASREC", "SITE_MAPS", "site_map", "Tower", "towers",
           "selected", "tower_of"]
