"""Small random-weight model folders that load offline like real ones (tests, demo fallback):
a BERT whose vocabulary covers the synthetic titles, and a ViT / ViT-MAE."""
from __future__ import annotations

import json
import string
from pathlib import Path

from ...errors import ConfigError
from .text import vocabulary


def write_tiny_bert(out_dir, words=None, hidden_size=64, num_layers=2, num_heads=2,
                    intermediate_size=128, seed=0):
    """Write a small, randomly initialised Hugging Face BERT folder and return its path.

    The vocabulary is the special tokens plus ``words`` (default: the generator's vocabulary, some
    punctuation, letters and digits, and their ``##`` continuations, so any ASCII text tokenizes
    without [UNK]). Loads offline with ``AutoModel`` / ``AutoTokenizer.from_pretrained(out_dir)``.
    """
    import torch  # imported here so the data generator itself does not need torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    if words is None:
        chars = list(string.ascii_lowercase + string.digits)
        words = vocabulary() + list("&-,.'/():;!?+#%\"") + chars + [f"##{c}" for c in chars]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + [w for w in dict.fromkeys(words) if w not in specials]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("".join(f"{w}\n" for w in vocab), encoding="utf-8")

    max_len = 64
    # transformers 5 takes the vocabulary as `vocab=`; an old-style `vocab_file=` is silently
    # ignored and leaves a tokenizer that maps every word to [UNK].
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True,
                                  model_max_length=max_len)
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, expected {len(vocab)}")
    tokenizer.save_pretrained(out)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden_size,
                        num_hidden_layers=num_layers, num_attention_heads=num_heads,
                        intermediate_size=intermediate_size, max_position_embeddings=max_len)
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = BertModel(config)
    model.save_pretrained(out)
    return str(out)


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def write_tiny_vit(out_dir, kind: str = "vit", image_size: int = 32, patch_size: int = 8,
                   hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2,
                   intermediate_size: int = 64, seed: int = 0) -> str:
    """Write a small random-weight ``ViTModel`` (kind ``vit``) or ``ViTMAEModel`` (``mae``) folder
    with a ``preprocessor_config.json`` like the real models' (0.5 mean/std for ViT, ImageNet
    mean/std for MAE); returns its path. Loads offline like pretrained_models/vit-base-patch16-224."""
    import torch
    from transformers import ViTConfig, ViTMAEConfig, ViTMAEModel, ViTModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # as load_backbone: no "Writing model shards" bar

    if kind not in ("vit", "mae"):
        raise ConfigError(f"kind must be 'vit' or 'mae', got {kind!r}")
    common = dict(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                  num_hidden_layers=num_layers, num_attention_heads=num_heads,
                  intermediate_size=intermediate_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        if kind == "vit":
            model = ViTModel(ViTConfig(**common), add_pooling_layer=False)
            mean, std = [0.5] * 3, [0.5] * 3
        else:
            model = ViTMAEModel(ViTMAEConfig(**common, mask_ratio=0.75))
            mean, std = IMAGENET_MEAN, IMAGENET_STD
    model.save_pretrained(out)
    pre = {"do_normalize": True, "do_resize": True, "image_mean": mean, "image_std": std,
           "resample": 2, "size": image_size}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2), encoding="utf-8")
    return str(out)
