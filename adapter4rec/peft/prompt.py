"""``prompt``: soft prompt tuning of the item encoder -- n learned token embeddings.

Text (BERT / RoBERTa): the prompt goes right after the first token, ``[CLS] p_1..p_n title [SEP]``,
so CLS pooling still reads position 0 and the title is kept in full (the reference overwrote the
first n title tokens with the prompt). A forward pre-hook on the backbone embeds ``input_ids``,
inserts the prompt and extends the attention mask; the prompt rows start as copies of randomly
chosen vocabulary rows (``init: vocab``) or N(0, init_std).

Images (ViT / ViT-MAE): n prompt tokens are appended after the patch tokens by a forward hook on
``embeddings`` (positions 1+P..P+n); they start N(0, init_std).

In both cases a forward hook on the backbone removes the prompt positions from
``last_hidden_state``, so the encoder's pooling (CLS or masked mean) sees exactly the positions it
was given. Other outputs (``hidden_states`` when requested) keep them. The backbone must accept
``max_title_len + n_tokens`` positions (BERT: 512).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from ..errors import ConfigError
from . import options as opt
from .registry import register

FORWARD_ARGS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")


def _item_only(value, key="towers"):
    value = opt.towers(value, key)
    if value != ["item"]:
        raise ConfigError(f"peft.options.{key}: prompt tuning adds tokens to the item encoder's "
                          "input only; use towers: item (the user tower stays frozen)")
    return value


@dataclass
class PromptOptions(opt.Options):
    towers: list = opt.option(["item"], _item_only, "item (the only tower with tokens)")
    n_tokens: int = opt.option(30, opt.count(), "number of prompt tokens (the reference: 30)")
    init: str = opt.option("vocab", opt.choice("vocab", "random"),
                           "text: vocab (copies of random vocabulary rows) or random; images: random")
    init_std: float = opt.option(0.02, opt.number(), "std of the N(0, std) init (random / images)")
    # prompt tuning (Lester et al.) trains the prompt only: off by default
    tune_layernorm: bool = opt.option(False, opt.boolean, "also tune every LayerNorm of the item encoder")


class SoftPrompt(nn.Module):
    def __init__(self, weight: torch.Tensor, mode: str):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.mode = mode

    @property
    def n(self) -> int:
        return self.weight.shape[0]

    def expand(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        return self.weight.to(like.dtype).unsqueeze(0).expand(batch, -1, -1)


def _text_pre_hook(prompt: SoftPrompt, module, args, kwargs):
    kwargs = {**dict(zip(FORWARD_ARGS, args)), **kwargs}
    if kwargs.get("position_ids") is not None:
        raise RuntimeError("soft prompt: explicit position_ids are not supported")
    ids = kwargs.pop("input_ids", None)
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        embeds = module.get_input_embeddings()(ids)
    b, n = embeds.shape[0], prompt.n
    kwargs["inputs_embeds"] = torch.cat([embeds[:, :1], prompt.expand(b, embeds), embeds[:, 1:]], 1)
    mask = kwargs.get("attention_mask")
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    kwargs["attention_mask"] = torch.cat([mask[:, :1], mask.new_ones(b, n), mask[:, 1:]], 1)
    types = kwargs.get("token_type_ids")
    if types is not None:
        kwargs["token_type_ids"] = torch.cat([types[:, :1], types.new_zeros(b, n), types[:, 1:]], 1)
    return (), kwargs


def _patch_hook(prompt: SoftPrompt, module, args, output):
    """Append the prompt after the patch tokens (ViT returns a tensor, ViT-MAE a tuple)."""
    emb = output[0] if isinstance(output, tuple) else output
    emb = torch.cat([emb, prompt.expand(emb.shape[0], emb)], 1)
    return (emb, *output[1:]) if isinstance(output, tuple) else emb


def _strip_hook(prompt: SoftPrompt, module, args, output):
    h, n = output.last_hidden_state, prompt.n
    output.last_hidden_state = torch.cat([h[:, :1], h[:, 1 + n:]], 1) if prompt.mode == "text" else h[:, :-n]
    return output


@register("prompt", PromptOptions, "soft prompt tokens in the item encoder's input")
def insert_prompt(model, towers, options) -> None:
    t = towers["item"]
    mode = t.sites.prompt
    if mode is None:
        raise ConfigError(f"peft method 'prompt' does not support the {t.sites.family} item backbone")
    n, hidden = options.n_tokens, t.hidden
    if mode == "text" and options.init == "vocab":
        table = t.module.get_input_embeddings().weight.detach()
        rows = torch.randperm(table.shape[0])
        pad = getattr(t.module.config, "pad_token_id", None)
        rows = rows[rows != pad] if pad is not None else rows
        if len(rows) < n:
            raise ConfigError(f"peft.options.n_tokens: {n} is more than the vocabulary ({len(rows)})")
        weight = table[rows[:n]].clone()
    else:
        weight = torch.randn(n, hidden) * options.init_std
    prompt = SoftPrompt(weight, mode)
    t.module.add_module("peft_prompt", prompt)
    if mode == "text":
        t.module.register_forward_pre_hook(partial(_text_pre_hook, prompt), with_kwargs=True)
    else:
        t.module.get_submodule("embeddings").register_forward_hook(partial(_patch_hook, prompt))
    t.module.register_forward_hook(partial(_strip_hook, prompt))


__all__ = ["PromptOptions", "SoftPrompt"]
