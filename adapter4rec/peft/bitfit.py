"""``bitfit``: tune only the bias terms of the listed towers (every ``bias`` parameter, LayerNorm
biases included, as Ben Zaken et al.)."""
from __future__ import annotations

from .options import TowerLayerOptions
from .registry import register
from .towers import bias_names, mark_tuned


@register("bitfit", TowerLayerOptions, "tune only bias terms")
def insert_bitfit(model, towers, options):
    mark_tuned(model, bias_names(towers, options.layers))
