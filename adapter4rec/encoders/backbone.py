"""Loading pretrained backbones offline, and the part every content item encoder shares."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from ..errors import ConfigError
from .base import ItemEncoder
from .sites import site_map

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _check_folder(path: str) -> Path:
    p = Path(path)
    if not (p / "config.json").is_file():
        raise ConfigError(
            f"pretrained model folder {p} has no config.json: put a Hugging Face model folder there "
            "(see pretrained_models/README.md); nothing is ever downloaded")
    return p


def load_backbone(path: str, random_init: bool = False, expect_type: str | None = None) -> nn.Module:
    """A transformers model from a local folder; with ``random_init`` built from its config only.

    Never downloads. fp32 always (transformers 5 otherwise keeps the checkpoint's dtype) and SDPA
    attention. The pooler head is left out: we pool ourselves, and an unused pooler would hold
    parameters no gradient reaches (DDP complains about those).
    """
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    # the load report would list the pooler we leave out on purpose as "unexpected"
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    p = _check_folder(path)
    try:
        config = AutoConfig.from_pretrained(p, local_files_only=True)
    except (OSError, ValueError) as e:  # not JSON, or not a model config
        raise ConfigError(f"{p / 'config.json'}: not a readable model config "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if expect_type and config.model_type not in expect_type.split("|"):
        raise ConfigError(f"{p}/config.json is a '{config.model_type}' model, expected {expect_type}")
    kwargs = {"add_pooling_layer": False} if config.model_type in ("bert", "roberta", "vit") else {}
    if config.model_type == "vit_mae":
        config.mask_ratio = 0.0  # items are encoded whole; the reference masked 75% at evaluation
    if random_init:
        return AutoModel.from_config(config, attn_implementation="sdpa", **kwargs).float()
    if not any((p / f).is_file() for f in WEIGHT_FILES):
        raise ConfigError(
            f"pretrained model folder {p} has a config but no weights (expected one of "
            f"{', '.join(WEIGHT_FILES)}); set model.random_init: true to train from random weights")
    try:
        model, info = AutoModel.from_pretrained(
            p, config=config, dtype=torch.float32, local_files_only=True,
            attn_implementation="sdpa", output_loading_info=True, **kwargs)
    except SafetensorError as e:  # a truncated or damaged weight file
        raise ConfigError(f"pretrained model folder {p}: its weight file cannot be read ({e}); it is "
                          "truncated or damaged: copy it again") from None
    except (RuntimeError, ValueError, OSError) as e:  # e.g. weight shapes that config.json contradicts
        why = ("some weight shapes differ from the sizes in config.json"
               if "mismatched" in str(e) else str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise ConfigError(f"pretrained model folder {p}: its weights do not load into the "
                          f"'{config.model_type}' model its config.json describes ({why}); check "
                          "that config.json and the weight file belong together") from None
    # Weights of another architecture load "successfully" with every missing tensor freshly
    # initialised (transformers only logs it): a silently untrained backbone. Refuse it.
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise ConfigError(
            f"pretrained model folder {p}: {len(missing)} weights of the '{config.model_type}' model "
            f"its config.json describes are not in its weight file (e.g. {', '.join(missing[:5])}); "
            "the folder's weights belong to another architecture or the file is incomplete")
    return model


# The vocabulary files of transformers' tokenizers: a fast tokenizer's tokenizer.json, WordPiece
# (BERT), byte-level BPE (GPT-2, RoBERTa), SentencePiece (T5, ALBERT, XLM-R, LLaMA, DeBERTa-v2).
SENTENCEPIECE_FILES = ("spiece.model", "sentencepiece.bpe.model", "sentencepiece.model",
                       "tokenizer.model", "spm.model")


def _check_tokenizer_files(p: Path) -> None:
    """Refuse a folder without a vocabulary: transformers 5 then builds a tokenizer of the special
    tokens alone, every title becomes [UNK], and training "succeeds" with HR@10 0.000."""
    if any((p / f).is_file() for f in ("tokenizer.json", "vocab.txt") + SENTENCEPIECE_FILES):
        return
    bpe = [f for f in ("vocab.json", "merges.txt") if (p / f).is_file()]
    if len(bpe) == 2:
        return
    found = f" (only {bpe[0]} of the pair vocab.json + merges.txt)" if bpe else ""
    raise ConfigError(
        f"pretrained model folder {p} has no tokenizer files{found}: expected tokenizer.json, "
        f"vocab.txt, vocab.json + merges.txt, or a SentencePiece model ({', '.join(SENTENCEPIECE_FILES)}); "
        "copy them from the model's original folder (tokenizer.save_pretrained writes them)")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    p = _check_folder(path)
    _check_tokenizer_files(p)
    return AutoTokenizer.from_pretrained(p, local_files_only=True)


def hidden_size(backbone: nn.Module) -> int:
    return backbone.config.hidden_size


class ContentEncoder(ItemEncoder):
    """Shared by text and image item encoders: a backbone, pooling, Linear(hidden -> d) + GELU.

    The frozen prefix of the backbone (its embeddings and the layers below the lowest trainable
    one) runs in eval mode (no dropout) and under ``torch.no_grad()`` (``no_grad_below``; see
    ``_enter_frozen_prefix``): it is a fixed function of the item, which the frozen-prefix cache
    (``cache.prefix``) stores once. Content ``{"prefix": states entering layer k, ...}`` (from that
    cache) runs only layers k.. (``run_upper``).
    """

    def __init__(self, backbone: nn.Module, d: int, pooling: str = "cls"):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"model.pooling must be 'cls' or 'mean', got {pooling!r}")
        self.backbone, self.pooling = backbone, pooling
        self.project = nn.Sequential(nn.Linear(hidden_size(backbone), d), nn.GELU())
        self.no_grad_below = True
        self.prefix_layer = None  # k > 0 once the frozen-prefix cache serves layers 0..k-1
        pre = backbone.register_forward_pre_hook(partial(_enter_frozen_prefix, self))
        post = backbone.register_forward_hook(partial(_leave_frozen_prefix, self), always_call=True)
        # the encoder's own hooks (they change no output): a method's hooks are the other ones
        self.own_hooks = frozenset((pre.id, post.id))

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        if mask is None:
            return hidden.mean(1)
        m = mask[..., None].to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)

    def train(self, mode: bool = True) -> "ContentEncoder":
        """A backbone with nothing trainable runs in eval mode even in training: it is a fixed
        feature extractor, and computes exactly what the hidden-state cache holds (no dropout).
        Likewise its frozen prefix (embeddings and layers below the lowest trainable one), so that
        a run reading it from the frozen-prefix cache trains the same function."""
        super().train(mode)
        if not mode:
            return self
        k, layers = lowest_trainable_layer(self.backbone)
        if k is None:
            self.backbone.eval()
        elif k > 0:
            for m in prefix_modules(self.backbone, k):
                m.eval()
        return self

    def encode(self, content: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.peft_side is None and "hidden" in content:
            # peft.method frozen with cache.frozen: the cached pooled output of the frozen backbone
            return self.project(content["hidden"][:, -1].to(self.project[0].weight.dtype))
        if self.peft_side is None and "prefix" in content:
            mask = content.get("attention_mask")
            return self.head(self.run_upper(content["prefix"], mask), mask)
        return super().encode(content)

    def head(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Item vectors from the backbone's ``last_hidden_state`` (pooling, projection)."""
        return self.project(self.pool(hidden, mask))

    def run_upper(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``last_hidden_state`` of the backbone for the hidden states entering layer
        ``self.prefix_layer`` (and, for text, the attention mask): the unchanged transformers model
        is called with its layer list cut to the layers from there on and its embeddings module
        passing the states through (both only for this call)."""
        k = self.prefix_layer
        if not k:
            raise RuntimeError("frozen-prefix states given to an item encoder with no prefix layer")
        backbone = self.backbone
        path = site_map(backbone).layers
        parent_path, _, name = path.rpartition(".")
        parent = backbone.get_submodule(parent_path) if parent_path else backbone
        layers = getattr(parent, name)
        states = states.to(self.project[0].weight.dtype)
        emb = backbone.embeddings
        emb.forward = lambda *args, **kwargs: states   # instance attribute: shadows the class method
        parent._modules[name] = layers[k:]
        try:
            if self.modality == "text":
                out = backbone(inputs_embeds=states, attention_mask=mask)
            else:
                out = backbone(pixel_values=states)
        finally:
            parent._modules[name] = layers
            del emb.forward
        return out.last_hidden_state


def prefix_modules(backbone: nn.Module, k: int) -> list[nn.Module]:
    """The modules of the frozen prefix below layer ``k``: the embeddings and layers 0..k-1."""
    return [backbone.embeddings, *list(backbone.get_submodule(site_map(backbone).layers))[:k]]


def lowest_trainable_layer(backbone: nn.Module) -> tuple[int | None, nn.ModuleList | None]:
    """(k, layers): layers[:k] hold nothing trainable and nothing before them does either.

    k is 0 when anything outside the layer list trains (embeddings, a soft prompt, a module reading
    the layers from outside, ...), None when nothing trains at all; modules after the layers
    (ViT's final LayerNorm) count as the last layer, and a module marked ``used_inside_layers``
    (Compacter's shared rule matrices) counts as its users do.
    """
    try:
        path = site_map(backbone).layers
    except ConfigError:
        return 0, None
    layers = backbone.get_submodule(path)
    lowest = None
    for name, p in backbone.named_parameters():
        if not p.requires_grad or getattr(getattr(backbone, name.split(".", 1)[0], None),
                                          "used_inside_layers", False):
            continue
        if name.startswith(path + "."):
            i = int(name[len(path) + 1:].split(".", 1)[0])
        elif name.split(".", 1)[0] in ("layernorm", "pooler"):
            i = len(layers) - 1
        else:
            return 0, layers
        lowest = i if lowest is None else min(lowest, i)
    return lowest, layers


def _enable_grad(module, args):
    torch.set_grad_enabled(True)


def _enter_frozen_prefix(encoder: "ContentEncoder", module, args):
    """Backbone pre-hook: run the frozen prefix (embeddings + layers below the lowest trainable
    layer) without autograd, re-enabled by a one-call pre-hook on that layer.

    Autograd itself keeps no activations for operations none of whose inputs require grad, so
    this changes neither the gradients nor (today) the memory; it makes the guarantee explicit and
    skips autograd's bookkeeping for the prefix."""
    encoder.__dict__["_grad_before"] = None
    if not (encoder.no_grad_below and torch.is_grad_enabled()):
        return
    k, layers = lowest_trainable_layer(module)
    if k == 0:
        return
    encoder.__dict__["_grad_before"] = True
    torch.set_grad_enabled(False)
    if k is not None:
        handle = layers[k].register_forward_pre_hook(_enable_grad)
        encoder.__dict__["_grad_handle"] = handle


def _leave_frozen_prefix(encoder: "ContentEncoder", module, args, output):
    handle = encoder.__dict__.pop("_grad_handle", None)
    if handle is not None:
        handle.remove()
    if encoder.__dict__.pop("_grad_before", None) is not None:
        torch.set_grad_enabled(True)
