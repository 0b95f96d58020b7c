"""The GPU rows of issue 15 in one process, each written out as soon as it finishes.

    bash benchmarks/gpu.sh [ARGS]        # on the GPU machine: installs, then this script
    python benchmarks/gpu.py [--dry] [--out DIR] [--shared DIR] [--rows bert:houlsby,...]

Rows (batch 64 users, max_seq_len 10, ``train.amp: auto`` = bf16 on CUDA, SDPA attention, the BCE
objective; ``benchmarks/train_step.py``'s worker, run in this process one row after another):
- BERT-base (random weights from ``<shared>/pretrained_configs/bert-base-uncased``) on the first
  ``steps x 64`` users of Scientific: houlsby, iisan cached and uncached, houlsby in the top 2
  layers without and with the frozen-prefix cache (``cache.prefix``), full, lora, reference mode
  (every slot, fp32); and ``eval``: a validation pass over all of Scientific (12k users x 20k items)
  against its item-encoding pass (``benchmarks/evaluate.py``'s Scientific row);
- ViT-base (random weights, ``vit-base-patch16-224``) on Scientific's users with a synthetic image
  per item (64 px PNGs in an LMDB store, resized to 224 on reading; needs ``lmdb``): the same rows
  but reference mode, which encodes title tokens only (and at batch 64 would put 1,408 images a step
  through the backbone in fp32).

Each row: median and mean step time, sequences/s, the Scientific epoch extrapolated from the mean
step (ceil(12,076 / 64) = 189 steps), peak memory (``torch.cuda.max_memory_allocated`` after a
reset, model and optimizer included), matmul FLOPs per step and achieved FLOP/s against the
measured ``torch.mm`` peak of the row's precision (``roofline.py``), and the issue's target where
one applies. The timed batches are built before the timing (the trainer's DataLoader workers
overlap that work with the step). ``--dry`` runs the same code on the CPU with tiny models and
synthetic data in seconds (the test suite runs it; its figures mean nothing).

Output: ``gpu.json`` and ``gpu.md`` in ``--out`` (default ``$OUT``, else ``benchmarks/gpu-results``),
both rewritten after every row, so a run cut short keeps the rows it finished. Rows not reached
within ``--budget-s`` are listed as skipped.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (model, method): BERT first, the rows with targets leading, so a run cut short keeps those
ROWS = [("bert", m) for m in ("houlsby", "iisan-cached", "eval", "houlsby-top2", "houlsby-top2-prefix", "full",
                              "lora", "iisan-uncached", "reference")] + \
       [("vit", m) for m in ("houlsby", "iisan-cached", "houlsby-top2", "houlsby-top2-prefix", "full", "lora",
                             "iisan-uncached")]
GEMM_ROWS = ("reference", "houlsby", "full", "lora", "houlsby-top2", "houlsby-top2-prefix")
TARGET_GEMM = 0.40  # of the measured peak, large-GEMM rows on a GPU
TARGET_EPOCH = {("bert", "houlsby"): 15.0, ("bert", "iisan-cached"): 2.0}  # seconds, H100/H200
TARGET_EVAL, TARGET_PREFIX = 1.2, 3.0  # eval pass / encoding pass; top-2 houlsby with / without prefix


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # a run killed mid-write leaves the previous complete file


# ------------------------------------------------------------------------------------------- data

def text_slice(src: Path, out: Path, users: int) -> Path:
    """The first ``users`` users of ``src`` with all its items."""
    out.mkdir(parents=True, exist_ok=True)
    lines = (src / "users.tsv").read_text(encoding="utf-8").splitlines()[:users]
    (out / "users.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "items.tsv").write_bytes((src / "items.tsv").read_bytes())
    return out


def image_slice(src: Path, out: Path, users: int, size: int = 64) -> Path:
    """The first ``users`` users of ``src``, an items file of the ids they hold (the image layout)
    and ``images.lmdb`` with a synthetic ``size`` px image for each (decoded and resized on reading,
    as product photos are)."""
    from adapter4rec.data.lmdb import build_lmdb
    from adapter4rec.data.synthetic import TOPICS, write_item_images

    out.mkdir(parents=True, exist_ok=True)
    lines = (src / "users.tsv").read_text(encoding="utf-8").splitlines()[:users]
    (out / "users.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ids = list(dict.fromkeys(i for line in lines for i in line.split("\t", 1)[1].split()))
    (out / "items.tsv").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    topics = list(TOPICS)
    write_item_images(out / "images", {i: topics[n % len(topics)] for n, i in enumerate(ids)}, size)
    build_lmdb(out / "images", out / "items.tsv", out / "images.lmdb", overwrite=True, progress=False)
    return out


# ------------------------------------------------------------------------------------------- rows

def fmt(x, spec: str, none: str = "-") -> str:
    return none if x is None else format(x, spec)


def targets(row: dict, rows: list[dict]) -> list[str]:
    """The issue's targets that apply to ``row``, each with its measured figure and met/missed."""
    out = []
    key, on_gpu = (row["model"], row["method"]), row["device"] == "cuda"

    def verdict(ok):
        return ("met" if ok else "missed") if on_gpu else "n/a on CPU"
    if key in TARGET_EPOCH and row.get("scientific_epoch_s") is not None:
        t = TARGET_EPOCH[key]
        out.append(f"epoch {row['scientific_epoch_s']:.1f} s <= {t:g} s: {verdict(row['scientific_epoch_s'] <= t)}")
    if row["method"] == "eval" and row.get("eval_vs_encode") is not None:
        out.append(f"eval / encoding {row['eval_vs_encode']:.3f} <= {TARGET_EVAL}: "
                   f"{verdict(row['eval_vs_encode'] <= TARGET_EVAL)}")
    if row["method"] == "houlsby-top2-prefix" and row.get("step_s"):
        base = next((r for r in rows if r["model"] == row["model"] and r["method"] == "houlsby-top2"
                     and r.get("step_s")), None)
        if base:
            ratio = base["mean_step_s"] / row["mean_step_s"]
            row["speedup_vs_no_prefix"] = round(ratio, 2)
            goal = TARGET_PREFIX if row["model"] == "bert" else None
            out.append(f"{ratio:.2f}x the step without prefix cache" +
                       (f" >= {goal:g}x: {verdict(ratio >= goal)}" if goal else ""))
    if row["method"] in GEMM_ROWS and row.get("peak_fraction") is not None:
        out.append(f"{row['peak_fraction']:.0%} of peak >= {TARGET_GEMM:.0%}: {verdict(row['peak_fraction'] >= TARGET_GEMM)}")
    return out


def markdown(result: dict) -> str:
    dev = result["device_name"]
    lines = [f"# GPU rows (issue 15) — {dev}", "",
             f"torch {result['torch']}, transformers {result['transformers']}; batch {result['batch']}, "
             f"L = {result['seq_len']}; {result['epoch_steps']} steps per Scientific epoch "
             f"({result['epoch_users']} users); {'DRY RUN (tiny models, CPU): figures mean nothing; ' if result['dry'] else ''}"
             f"{result['elapsed_s']:.0f} s so far{'' if result.get('finished') else ' (not finished)'}.", ""]
    for p, v in result["peaks"].items():
        nominal = f"{v['nominal_flops_s'] / 1e12:.4g}" if v.get("nominal_flops_s") else "?"
        lines.append(f"- peak {p}: torch.mm {v['n']}x{v['n']} **{v['flops_s'] / 1e12:.3g} TFLOP/s** measured "
                     f"({v['clock']}); nominal {nominal} TFLOP/s ({v['nominal_derivation']})")
    lines += ["", "| model | row | prec | step s (median) | seq/s | Scientific epoch s | peak mem GB | "
              "GFLOP/step | TFLOP/s | of peak | trainable | target |", "|" + "---|" * 12]
    for r in result["rows"]:
        if r.get("skipped") or r.get("error"):
            lines.append(f"| {r['model']} | {r['method']} | | | | | | | | | | "
                         f"{'skipped: ' + r['skipped'] if r.get('skipped') else 'failed: ' + r['error']} |")
        elif r["method"] == "eval":
            lines.append(f"| {r['model']} | eval: {r['users']} users x {r['items']} items | {r['precision']} | "
                         f"encode {r['encode_wall_s']:.2f} s + rank {r['rank_wall_s']:.2f} s | | | | "
                         f"{r['eval_flops'] / 1e9:.4g} (pass) | {fmt(r.get('eval_tflops_s'), '.3g')} | "
                         f"{fmt(r.get('eval_peak_fraction'), '.0%')} | | {'; '.join(r['targets'])} |")
        else:
            lines.append(f"| {r['model']} | {r['method']} | {r['precision']} | {r['step_s']:.4f} | "
                         f"{r['sequences_per_s']:.0f} | {r['scientific_epoch_s']:.2f} | {r['peak_mem_mb'] / 1024:.2f} | "
                         f"{r['flops_per_step'] / 1e9:.4g} | {fmt(r.get('tflops_s'), '.3g')} | "
                         f"{fmt(r.get('peak_fraction'), '.0%')} | {r['trainable_params']:,} | {'; '.join(r['targets'])} |")
    builds = [r for r in result["rows"] if r.get("cache_build")]
    if builds:
        lines += [""] + [f"- cache build for {r['model']} {r['method']} (once, before the row): "
                         f"{r['cache_build']['seconds']:.1f} s, {r['cache_build']['cache_mb']} MB" for r in builds]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="tiny models on the CPU, synthetic data: seconds")
    ap.add_argument("--out", default=None, help="output folder (default: $OUT, else benchmarks/gpu-results)")
    ap.add_argument("--shared", default=None,
                    help="folder with datasets/amazon-scientific and pretrained_configs (default: $A4R_SHARED, "
                         "else shared/ in the checkout, else ../shared)")
    ap.add_argument("--rows", default=None, help="model:method,... (default: all; e.g. bert:houlsby,bert:eval)")
    ap.add_argument("--batch", type=int, default=None, help="users per step (default 64; --dry 4)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps of a BERT row (default 20; --dry 2)")
    ap.add_argument("--vit-steps", type=int, default=None, help="timed steps of a ViT row (default 8; --dry 2)")
    ap.add_argument("--reference-steps", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=200.0,
                    help="start no row after this many seconds (gpu.sh's whole run must fit in 4 minutes)")
    args = ap.parse_args(argv)
    if args.shared:
        os.environ["A4R_SHARED"] = str(Path(args.shared).resolve())
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch
    import transformers

    import evaluate as eval_bench
    import train_step
    from roofline import peaks, roofline

    rows_wanted = ROWS
    if args.rows:
        rows_wanted = [tuple(r.split(":", 1)) for r in args.rows.split(",")]
        bad = [r for r in rows_wanted if r not in ROWS]
        if bad:
            raise SystemExit(f"unknown --rows {', '.join(':'.join(b) for b in bad)} "
                             f"(known: {', '.join(':'.join(r) for r in ROWS)})")
    out_dir = Path(args.out or os.environ.get("OUT") or ROOT / "benchmarks" / "gpu-results")
    out_dir.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry:
        raise SystemExit("no CUDA device: run on the GPU machine, or --dry for the CPU check")
    device = torch.device("cuda" if cuda else "cpu")
    batch = args.batch or (4 if args.dry else 64)
    steps = args.steps or (2 if args.dry else 20)
    vit_steps = args.vit_steps or (2 if args.dry else 8)
    ref_steps = min(args.reference_steps, steps)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="a4r-gpu-"))
    if args.dry:
        from adapter4rec.data.synthetic import make_domain, write_tiny_bert, write_tiny_vit

        source = tmp / "syn"
        make_domain(source, "source", n_users=100, n_items=120)
        models = {"bert": write_tiny_bert(tmp / "bert", num_layers=4, hidden_size=32, num_heads=2,
                                          intermediate_size=64),
                  "vit": write_tiny_vit(tmp / "vit", num_layers=4)}
        label = {"bert": "tiny BERT (4 layers)", "vit": "tiny ViT (4 layers)"}
    else:
        source = train_step.SCIENTIFIC
        if not (source / "users.tsv").is_file():
            raise SystemExit(f"{source} not found: copy ../shared/datasets/amazon-scientific there, or --shared DIR")
        models = {"bert": str(train_step.CONFIGS / "bert-base-uncased"),
                  "vit": str(train_step.CONFIGS / "vit-base-patch16-224")}
        label = {"bert": "BERT-base (random weights)", "vit": "ViT-base/16 (random weights)"}
        for m in models.values():
            if not (Path(m) / "config.json").is_file():
                raise SystemExit(f"{m}/config.json not found: copy ../shared/pretrained_configs there, or --shared DIR")
    n_users = len((source / "users.tsv").read_text(encoding="utf-8").splitlines())
    epoch_steps = math.ceil(n_users / batch)
    # the dry run's 256 x 256 peak takes no time (its figures mean nothing anyway)
    pk = peaks(("bf16", "fp32"), device, torch.get_num_threads(), n=256 if args.dry else 4096)
    result = {"device": device.type, "device_name": torch.cuda.get_device_name(0) if cuda else
              train_step.machine()["name"] + " (dry run)", "dry": args.dry, "torch": torch.__version__,
              "transformers": transformers.__version__, "batch": batch, "seq_len": 10,
              "epoch_users": n_users, "epoch_steps": epoch_steps, "models": label, "peaks": pk,
              "has_prefix_cache": train_step.has_prefix_cache(), "rows": [], "elapsed_s": 0.0}

    def save():
        result["elapsed_s"] = round(time.perf_counter() - t0, 1)
        write_atomic(out_dir / "gpu.json", json.dumps(result, indent=2))
        write_atomic(out_dir / "gpu.md", markdown(result))

    data = {}
    lmdb_ok = _has_lmdb()
    for model, method in rows_wanted:
        row = {"model": model, "method": method, "device": device.type}
        elapsed = time.perf_counter() - t0
        why = (f"time budget ({args.budget_s:.0f} s) spent" if elapsed > args.budget_s else
               "lmdb not installed (put its wheel in benchmarks/wheels: see gpu.sh)" if model == "vit" and not lmdb_ok else
               "cache.prefix is not in this version's config" if method.endswith("prefix") and not result["has_prefix_cache"]
               else None)
        if why:
            result["rows"].append({**row, "skipped": why})
            save()
            continue
        print(f"[{elapsed:5.0f} s] {model} {method}", flush=True)
        try:
            if model not in data:  # a slice of steps x batch users: one epoch of the timed steps
                n = (steps if model == "bert" else vit_steps) * batch
                data[model] = (text_slice(source, tmp / "bert-data", n) if model == "bert"
                               else image_slice(source, tmp / "vit-data", n))
            if method == "eval":
                row.update(_eval_row(eval_bench, models[model], source, tmp, args.dry))
                pr = pk[row["precision"]]
                roofline(row, row["encode_flops"], row["encode_wall_s"], pr, "encode_")
                row["eval_flops"] = row["encode_flops"] + row["rank_flops"]
                roofline(row, row["eval_flops"], row["eval_wall_s"], pr, "eval_")
                row["eval_vs_encode"] = row["eval_vs_encode_wall"]
            else:
                row.update(_train_row(train_step, model, method, models[model], data[model], tmp, batch,
                                      ref_steps if method == "reference" else steps if model == "bert" else vit_steps))
                roofline(row, row["flops_per_step"], row["flops_clock_s"], pk[row["precision"]])
                row["scientific_epoch_s"] = round(row["mean_step_s"] * epoch_steps, 3)
        except Exception as e:  # one failed row (out of memory, say) must not lose the others
            first = str(e).splitlines()[0] if str(e) else ""
            row = {**row, "error": f"{type(e).__name__}: {first}"[:300]}
            traceback.print_exc()
        except SystemExit as e:
            row = {**row, "error": str(e)[:300]}
        finally:
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        row["targets"] = targets(row, result["rows"]) if not row.get("error") else []
        result["rows"].append(row)
        save()
        if not row.get("error"):
            shown = row.get("scientific_epoch_s", row.get("eval_wall_s"))
            print(f"         done: {shown} s; {'; '.join(row['targets'])}", flush=True)
    result["finished"] = True
    save()
    print(markdown(result))
    return result


def _has_lmdb() -> bool:
    try:
        import lmdb  # noqa: F401
    except ImportError:
        return False
    return True


def _train_row(train_step, model: str, method: str, folder: str, data: Path, tmp: Path, batch: int,
               steps: int) -> dict:
    spec = {"method": method, "data": str(data), "model": folder, "random_init": True, "batch": batch,
            "seq_len": 10, "cache_dir": str(tmp / f"cache-{model}-{method}"), "steps": steps, "threads": None,
            "prebuild": True, "eval": False,
            "sets": ["model.item_encoder=image", "data.images=images.lmdb", "data.image_size=0"]
            if model == "vit" else []}
    out = {}
    if method in train_step.CACHED_ROWS:  # built once before the row, as train_step.py does
        t = time.perf_counter()
        built = train_step.worker({**spec, "build_only": True})
        out["cache_build"] = {"seconds": round(time.perf_counter() - t, 2), "encode_s": round(built["build_seconds"], 2),
                              "cache_mb": built["cache_mb"]}
        gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    out.update(train_step.worker(spec))
    return out


def _eval_row(eval_bench, folder: str, source: Path, tmp: Path, dry: bool) -> dict:
    """``evaluate.py``'s Scientific row for the frozen backbone: the item-encoding pass and the
    ranking of every user, timed apart (ranking the reference's way on a sample, scaled)."""
    ns = argparse.Namespace(quick=True, cache_dir=str(tmp / "cache-eval"), reference_users=20 if dry else 300)
    out = {"rows": []}
    eval_bench.scientific(ns, folder, True, out, data_dir=source)
    row = out["rows"][0]
    return {k: v for k, v in row.items() if k != "size"}


if __name__ == "__main__":
    main()
