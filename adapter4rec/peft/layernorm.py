"""``layernorm``: tune only the LayerNorm weights and biases of the listed towers. The same
selection (``towers.layernorm_names``) serves ``tune_layernorm: true`` on any adapter method."""
from __future__ import annotations

from .options import TowerLayerOptions
from .registry import register
from .towers import layernorm_names, mark_tuned


@register("layernorm", TowerLayerOptions, "tune only LayerNorm weights and biases")
def insert_layernorm(model, towers, options):
    mark_tuned(model, layernorm_names(towers, options.layers))
