"""Synthetic images: one small image per item whose shape and colour follow the item's latent
topic (``text.TOPICS``), packed with the LMDB builder, so the image path runs end to end on CPU."""
from __future__ import annotations

import random
from pathlib import Path

from ..lmdb import build_lmdb
from ..readers import read_items
from .text import TOPICS, make_domain


_SHAPES = ("disc", "square", "triangle", "cross", "bars")
_COLOURS = ((220, 40, 40), (40, 150, 60), (40, 80, 220), (230, 170, 20))


def topic_look(topic: str) -> tuple[str, tuple[int, int, int]]:
    """Shape and colour of a topic's items: each of the 20 topics has its own pair, the same in
    every domain (so what is learned about a look on the source transfers to the target)."""
    k = list(TOPICS).index(topic)
    return _SHAPES[k % len(_SHAPES)], _COLOURS[k // len(_SHAPES) % len(_COLOURS)]


def draw_item_image(topic: str, rng: random.Random, size: int = 32):
    """A PIL image: the topic's shape in the topic's colour on a light background, with per-item
    variation (position, scale, shade, background tint and a small accent dot)."""
    from PIL import Image, ImageDraw

    shape, colour = topic_look(topic)
    bg = tuple(rng.randint(205, 250) for _ in range(3))
    im = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(im)
    r = size * rng.uniform(0.28, 0.4)
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size
    shade = rng.uniform(0.8, 1.1)
    fill = tuple(min(255, int(c * shade)) for c in colour)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "disc":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "cross":
        w = r / 2.5
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    else:  # bars
        for k in range(3):
            y = cy - r + k * r * 0.8
            d.rectangle((cx - r, y, cx + r, y + r * 0.4), fill=fill)
    a = size * 0.08
    ax, ay = rng.uniform(a, size - a), rng.uniform(a, size - a)
    d.ellipse((ax - a, ay - a, ax + a, ay + a), fill=tuple(rng.randint(0, 255) for _ in range(3)))
    return im


def write_item_images(out_dir: str | Path, item_topics: dict[str, str], size: int = 32,
                      seed: int = 0, fmt: str = "png") -> Path:
    """One image file ``out_dir/<item id>.<fmt>`` per item; returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ext = {"png": "png", "jpeg": "jpg", "jpg": "jpg"}[fmt.lower()]
    for item_id, topic in item_topics.items():
        rng = random.Random(f"adapter4rec-image-{seed}-{item_id}")
        im = draw_item_image(topic, rng, size)
        if ext == "jpg":
            im.save(out / f"{item_id}.jpg", format="JPEG", quality=90)
        else:
            im.save(out / f"{item_id}.png", format="PNG")
    return out


def make_image_domain(out_dir, domain="source", n_users=1000, n_items=400, seed=0, min_len=5,
                      max_len=20, image_size=32, fmt="png", keep_titles=False) -> dict:
    """A synthetic domain for image items: ``users.tsv``, ``items.tsv`` (one column unless
    ``keep_titles``), ``images/<id>.png`` and the packed store ``images.lmdb``.

    Returns ``make_domain``'s summary plus ``images`` (the store's path)."""
    out = Path(out_dir)
    summary = make_domain(out, domain, n_users, n_items, seed, min_len, max_len)
    if not keep_titles:  # the H&M / Amazon image layout: item ids only
        items = list(read_items(out / "items.tsv"))
        (out / "items.tsv").write_text("".join(f"{i}\n" for i in items), encoding="utf-8")
    write_item_images(out / "images", summary["item_topics"], image_size, seed, fmt)
    build_lmdb(out / "images", out / "items.tsv", out / "images.lmdb", overwrite=True, progress=False)
    summary["images"] = str(out / "images.lmdb")
    return summary


def make_image_transfer_pair(root, seed=0, source_users=1000, source_items=400, target_users=600,
                             target_items=300, image_size=32, min_len=5, max_len=20):
    """``root/source`` and ``root/target`` with images; returns their paths."""
    root = Path(root)
    make_image_domain(root / "source", "source", source_users, source_items, seed, min_len, max_len,
                      image_size)
    make_image_domain(root / "target", "target", target_users, target_items, seed, min_len, max_len,
                      image_size)
    return root / "source", root / "target"
