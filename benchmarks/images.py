"""Throughput of the image path: LMDB + PIL data pipeline and the ViT / ViT-MAE item encoder.

    python benchmarks/images.py [--json results.json] [--device cpu|cuda] [--quick]

What is measured (images per second, after one warm-up batch):
- ``build``: packing JPEG files into the LMDB store (``build_lmdb``, with verification);
- ``pipeline_main`` / ``pipeline_workers``: ``ImageContent.get`` (read from LMDB, JPEG decode,
  resize to the model's 224 px, uint8) in the main process, and through a DataLoader with
  ``--workers`` worker processes;
- ``encode_<model>``: the item encoder (random-weight ViT-base / ViT-MAE-base built from
  ``../shared/pretrained_configs``: the paper's shapes and cost) in eval mode, no gradient;
- ``train_vit``: one forward + backward pass of the ViT item encoder (full fine-tuning);
- host memory of one batch of pixels: uint8 (ours) against the float64 arrays of the reference.

The source images are synthetic JPEGs of ``--source-size`` pixels (product photos are larger than
224 px, so decoding includes a downscale). The default run takes about 2 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapter4rec.data.batching import item_loader  # noqa: E402
from adapter4rec.data.images import ImageContent  # noqa: E402
from adapter4rec.data.lmdb import build_lmdb  # noqa: E402
from adapter4rec.data.synthetic import draw_item_image  # noqa: E402
from adapter4rec.data.synthetic import TOPICS  # noqa: E402
from adapter4rec.encoders.backbone import load_backbone  # noqa: E402
from adapter4rec.runtime.precision import cpu_name  # noqa: E402
from adapter4rec.encoders.image import ImageItemEncoder, read_preprocessor  # noqa: E402

CONFIGS = ROOT.parent / "shared" / "pretrained_configs"


def machine(device: torch.device) -> dict:
    cpu = cpu_name()
    out = {"cpu": cpu, "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
           else os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "python": platform.python_version(), "device": str(device),
           "load_average_1min": round(os.getloadavg()[0], 2)}  # other work on the machine skews CPU figures
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def write_images(folder: Path, n: int, size: int) -> Path:
    """``n`` synthetic JPEG product photos of ``size`` x ``size`` and their one-column items file."""
    folder.mkdir(parents=True, exist_ok=True)
    topics = list(TOPICS)
    ids = [f"v{i:05d}" for i in range(1, n + 1)]
    for i, item in enumerate(ids):
        im = draw_item_image(topics[i % len(topics)], random.Random(i), size)
        im.save(folder / f"{item}.jpg", format="JPEG", quality=90)
    (folder.parent / "items.tsv").write_text("".join(f"{i}\r\n" for i in ids), encoding="utf-8")
    return folder.parent / "items.tsv"


def timed(fn, batches: int, batch_size: int, device: torch.device) -> float:
    """Images per second of ``fn(b)`` over ``batches`` batches after one warm-up call ``fn(-1)``."""
    fn(-1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in range(batches):
        fn(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batches * batch_size / (time.perf_counter() - t0)


def encoder(name: str, d: int = 64) -> ImageItemEncoder:
    folder = CONFIGS / name
    if not (folder / "config.json").is_file():
        raise SystemExit(f"{folder} not found: the benchmark builds ViT-base from the configs in "
                         "../shared/pretrained_configs")
    backbone = load_backbone(str(folder), random_init=True, expect_type="vit|vit_mae")
    pre = read_preprocessor(str(folder), backbone.config.model_type)
    return ImageItemEncoder(backbone, d, "cls", pre["mean"], pre["std"])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=256, help="synthetic images in the store")
    ap.add_argument("--source-size", type=int, default=512, help="side of the stored JPEGs")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=2,
                    help="timed encoder batches after a warm-up (half as many for training)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the pipeline")
    ap.add_argument("--models", default="vit-base-patch16-224,vit-mae-base")
    ap.add_argument("--no-train", action="store_true", help="skip the forward+backward measurement")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.source_size, args.batches, args.batch_size = 32, 256, 1, 2
    device = torch.device(args.device)
    res = {"machine": machine(device), "settings": {k: v for k, v in vars(args).items() if k != "json"},
           "images_per_second": {}}
    ips = res["images_per_second"]
    bs = args.batch_size

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        items = write_images(tmp / "images", args.images, args.source_size)
        t0 = time.perf_counter()
        build_lmdb(tmp / "images", items, tmp / "images.lmdb", progress=False)
        ips["build"] = args.images / (time.perf_counter() - t0)
        ids = [f"v{i:05d}" for i in range(1, args.images + 1)]
        content = ImageContent(tmp / "images.lmdb", ids, size=224)
        n_pipe = max(2, min(args.images // bs, 24))

        def pipe(b):
            return content.get((np.arange(b * bs, (b + 1) * bs) % args.images) + 1)

        ips["pipeline_main"] = timed(pipe, n_pipe, bs, torch.device("cpu"))
        ids = (np.arange((n_pipe * 2 + 1) * bs) % args.images) + 1
        loader = item_loader(content, ids, bs, args.workers)  # the evaluation / cache-build reader
        t0 = None
        for _ in loader:  # timed from the first batch on: worker start-up left out
            t0 = t0 or time.perf_counter()
        ips["pipeline_workers"] = n_pipe * 2 * bs / (time.perf_counter() - t0)
        px = pipe(0)["pixels"]
        res["host_bytes_per_batch"] = {"uint8 (ours)": px.numel(), "float32": px.numel() * 4,
                                       "float64 (reference)": px.numel() * 8}

        torch.manual_seed(0)
        for name in [m for m in args.models.split(",") if m]:
            enc = encoder(name).to(device).eval()
            key = "vit" if "mae" not in name else "mae"
            batch = px.to(device)
            with torch.no_grad():  # warm-up on 2 images, then full batches
                ips[f"encode_{key}"] = timed(lambda b: enc(batch if b >= 0 else batch[:2]),
                                             args.batches, bs, device)
            if key == "vit" and not args.no_train:
                enc.train()

                def step(b):
                    enc(batch if b >= 0 else batch[:2]).sum().backward()
                    enc.zero_grad(set_to_none=True)

                ips["train_vit"] = timed(step, max(1, args.batches // 2), bs, device)
            enc = batch = None  # free this model before the next one is built

    print(f"image path on {res['machine']['device']} ({res['machine']['cpu']}, "
          f"{res['machine']['cpu_cores']} cores, {res['machine']['torch_threads']} torch threads"
          + (f", {res['machine']['gpu']}" if "gpu" in res["machine"] else "") + f"), batch {bs}")
    for k, v in ips.items():
        print(f"  {k:18} {v:9.1f} images/s")
    for k, v in res["host_bytes_per_batch"].items():
        print(f"  pixels of one batch, {k:20} {v / 2**20:7.2f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2), encoding="utf-8")
    return res


if __name__ == "__main__":
    main()
