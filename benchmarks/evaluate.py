"""Full-ranking evaluation time against its item-encoding pass alone (target: at most 1.2x).

    python benchmarks/evaluate.py [--quick] [--model minilm|bert-base|DIR] [--json PATH]

Two sizes:
- ``scientific`` -- about 10k users x 20k items: the real Amazon Scientific data (12,076 users,
  20,314 items in sequences) with the text item encoder (all-MiniLM-L6-v2 by default),
  ``train.amp: auto``. A validation pass of the library is the item-encoding pass
  (``encode_all_items``) followed by the ranking of every user over every item (``rank_users``, in
  chunks): both are timed on their own and ``ratio`` is (encoding + ranking) / encoding. Also
  timed, for comparison, ranking as the reference did (one user at a time, a full argsort of all
  items per user) on a sample of users, scaled to all of them; and (not in ``--quick``) the same
  pass for ``iisan`` reading the hidden-state cache (the backbone does not run: the encoding pass
  is a read of the cache plus the side network), where ranking is then most of the time.
- ``synthetic-1m`` -- 100k users x 1M items, the users' histories random: the library's ranking
  is timed (``--quick``: 10k of the users, scaled by 10). By default the items are random vectors
  and the encoding of 1M titles is estimated from the items/second of the pass measured above (the
  pass is linear in the items); ``--encode-million`` runs it instead -- Scientific's titles repeated
  to 1M items through the same frozen model (47 minutes of 2 CPU cores with all-MiniLM-L6-v2) --
  and ranks over those vectors. Peak memory of the ranking (above the item matrix) shows that it is
  bounded: scores are computed for chunks of users at most ``SCORE_BUDGET`` elements wide.

Each figure is given in wall seconds and in process CPU seconds: with ``--threads 1`` the CPU
seconds measure the work even when other jobs share the machine, and the wall seconds do not.

Roofline (``roofline.py``): every row gives the matmul FLOPs of its encoding pass (``encode_flops``,
counted from the shapes the modules receive) and of its ranking (``rank_flops``: the user encoder
plus the ``users x items`` scores), and the achieved FLOP/s of each (``encode_tflops_s``,
``rank_tflops_s``, ``eval_tflops_s``) with its fraction of the measured ``torch.mm`` 4096 x 4096 peak
in the row's precision (``*_peak_fraction``; ``peaks`` holds it with the nominal figure and its
derivation). The clock is wall time on CUDA and process CPU time on the CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from roofline import FlopCounter, peaks, roofline, score_flops  # noqa: E402
from train_step import SCIENTIFIC, machine, peak_mb, reset_peak, resolve_model, rss_mb  # noqa: E402


class Clock:
    """Wall and CPU seconds of a block. With one torch thread, CPU seconds measure the work done
    even when other jobs share the cores (wall seconds then depend on the scheduler)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.synchronize()  # CUDA kernels run asynchronously: time their end, not their launch
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def reference_ranking(model, items, data, split, users) -> None:
    """Rank ``users`` one at a time with a full argsort of all items, as the reference did."""
    import torch

    from adapter4rec.data.batching import left_pad

    L = data.max_seq_len
    with torch.no_grad():
        for u in users:
            hist = torch.from_numpy(left_pad(data.history(u, split), L))[None]
            vec = model.user_vectors(items[hist], hist > 0)[0]
            scores = items @ vec
            scores[torch.from_numpy(data.history(u, split))] = -np.inf
            scores[0] = -np.inf
            order = torch.argsort(scores, descending=True)
            int((order == data.target(u, split)).nonzero()[0, 0]) + 1


def _row(row: dict, enc: Clock, rank: Clock) -> dict:
    for unit in ("wall", "cpu"):
        e, r = getattr(enc, unit), getattr(rank, unit)
        row[f"encode_{unit}_s"] = round(e, 2)
        row[f"rank_{unit}_s"] = round(r, 2)
        row[f"eval_{unit}_s"] = round(e + r, 2)
        row[f"eval_vs_encode_{unit}"] = round((e + r) / e, 3)
    return row


def scientific(args, model_dir, random_init, out: dict, data_dir=SCIENTIFIC) -> None:
    """One validation pass = the item-encoding pass + ranking every user (``evaluate`` does exactly
    these two, in this order); each is timed on its own."""
    import torch

    from adapter4rec.config import load_config
    from adapter4rec.evaluation.evaluator import encode_all_items, evaluate, rank_users
    from adapter4rec.pipeline import prepare
    from adapter4rec.runtime.logging import setup_logging
    from adapter4rec.runtime.precision import amp_dtype

    setup_logging()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sets = [f"data.path={data_dir}", f"model.pretrained={model_dir}",
            f"model.random_init={str(random_init).lower()}", "train.progress=false", "peft.method=frozen"]
    for method in ("frozen", "iisan"):
        if method == "iisan" and args.quick:
            break
        cfg = load_config(overrides=sets[:-1] + [f"peft.method={method}", f"cache.dir={args.cache_dir}"])
        with Clock() as prep:
            data, model, content, _ = prepare(cfg)  # iisan: builds the cache on first use
        model.to(device).eval()
        amp = amp_dtype(cfg.train.amp, device)
        bs = cfg.eval.item_batch_size
        row = {"size": "scientific", "users": data.n_users, "items": data.n_items,
               "encoder": "backbone" if method == "frozen" else "iisan (hidden-state cache)",
               "precision": "bf16" if amp else "fp32"}
        if method == "iisan":
            row["cache_prepare_wall_s"] = round(prep.wall, 2)
        with Clock() as enc, FlopCounter(model) as enc_flops:
            items = encode_all_items(model, content, device, bs, amp)
        with Clock() as rank, FlopCounter(model) as rank_flops:
            r = rank_users(model, items, data, "valid", device, cfg.eval.batch_size, True, amp)
        _row(row, enc, rank)
        row["encode_flops"] = enc_flops.total
        row["rank_flops"] = rank_flops.total + score_flops(data.n_users, *items.shape)
        ndcg = float(torch.where(r <= 10, 1 / torch.log2(r.clamp(max=1e9) + 1), torch.zeros_like(r)).mean())
        row["valid_ndcg10"] = round(ndcg, 4)
        if method == "frozen":
            out["encode_items_per_cpu_s"] = data.n_items / enc.cpu
            out["encode_items_per_wall_s"] = data.n_items / enc.wall
            n = min(data.n_users, args.reference_users)
            with Clock() as ref:
                reference_ranking(model, items, data, "valid", range(n))
            row["reference_rank_wall_s"] = round(ref.wall * data.n_users / n, 2)
            row["reference_rank_cpu_s"] = round(ref.cpu * data.n_users / n, 2)
            row["reference_rank_users_timed"] = n
            if not args.quick:  # the library's own call gives the same metric
                res = evaluate(model, content, data, device, splits=("valid",), batch_size=cfg.eval.batch_size,
                               item_batch_size=bs, amp_dtype=amp)
                assert abs(res["valid"]["NDCG@10"] - ndcg) < 1e-6, (res, ndcg)
        out["rows"].append(row)
        del model, content, items


def encode_million(model_dir, random_init, n_items: int, device):
    """The frozen text model of the Scientific row and the item matrix of ``n_items`` items whose
    titles are Scientific's, repeated (the same length mix), encoded by ``encode_all_items``."""
    from adapter4rec.config import load_config
    from adapter4rec.encoders.text import TextContent
    from adapter4rec.evaluation.evaluator import encode_all_items
    from adapter4rec.pipeline import prepare
    from adapter4rec.runtime.precision import amp_dtype

    cfg = load_config(overrides=[f"data.path={SCIENTIFIC}", f"model.pretrained={model_dir}",
                                 f"model.random_init={str(random_init).lower()}", "train.progress=false",
                                 "peft.method=frozen"])
    _, model, content, _ = prepare(cfg)
    titles = content.tokens[1:]
    tokens = np.concatenate([content.tokens[:1], titles[np.arange(n_items) % len(titles)]])
    big = TextContent(tokens, content.pad_id)
    model.to(device).eval()
    with Clock() as enc, FlopCounter(model) as flops:
        items = encode_all_items(model, big, device, cfg.eval.item_batch_size,
                                 amp_dtype(cfg.train.amp, device), progress=True)
    return model, items, enc, flops.total


def million(args, model_dir, random_init, out: dict) -> None:
    import torch

    from adapter4rec.data.split import RecData
    from adapter4rec.encoders.sasrec import SASRec
    from adapter4rec.evaluation.evaluator import SCORE_BUDGET, rank_users
    from adapter4rec.model import Recommender

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as the Scientific row
    n_items, n_users = args.million_items, args.million_users
    timed_users = n_users // 10 if args.quick else n_users
    enc_flops_million = None
    if args.encode_million:
        model, items, enc, enc_flops_million = encode_million(model_dir, random_init, n_items, device)
    else:
        torch.manual_seed(0)
        model = Recommender(torch.nn.Identity(), SASRec(64, 10)).to(device).eval()
        items = torch.randn(n_items + 1, 64, device=device)
        items[0] = 0
        enc = Clock()  # estimated from the Scientific pass's items per second
        enc.wall, enc.cpu = n_items / out["encode_items_per_wall_s"], n_items / out["encode_items_per_cpu_s"]
    rng = np.random.default_rng(0)
    lens = rng.integers(5, 16, size=timed_users)
    seqs = [rng.integers(1, n_items + 1, size=k) for k in lens]
    data = RecData(item_ids=[f"i{i}" for i in range(n_items)], texts=[], user_ids=[str(u) for u in range(timed_users)],
                   seqs=seqs, max_seq_len=10)
    base = rss_mb()
    reset_peak()
    with Clock() as rank, FlopCounter(model) as rank_flops:
        r = rank_users(model, items, data, "valid", device)
    assert len(r) == timed_users
    scale = n_users / timed_users
    rank.wall, rank.cpu = rank.wall * scale, rank.cpu * scale
    row = {"size": "synthetic-1m", "users": n_users, "items": n_items,
           "encoder": "backbone" + ("" if args.encode_million else " (encoding estimated)"),
           "encode_estimated": not args.encode_million, "rank_users_timed": timed_users,
           "rank_peak_mem_mb": round(peak_mb() - base, 1),
           "score_chunk_users": max(1, min(256, SCORE_BUDGET // (n_items + 1))),
           "precision": "fp32",  # rank_users is called without autocast here
           # FLOPs of all the users (the timed ones scaled); the encoding's only when it ran
           "rank_flops": round((rank_flops.total + score_flops(timed_users, *items.shape)) * scale)}
    if args.encode_million:
        row["encode_flops"] = enc_flops_million
    out["rows"].append(_row(row, enc, rank))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="minilm", help="minilm | bert-base (random weights) | a folder")
    ap.add_argument("--reference-users", type=int, default=None,
                    help="users ranked the reference's way (scaled to all users)")
    ap.add_argument("--million-items", type=int, default=1_000_000)
    ap.add_argument("--million-users", type=int, default=100_000)
    ap.add_argument("--encode-million", action="store_true",
                    help="encode the 1M items (Scientific's titles repeated) instead of estimating the pass")
    ap.add_argument("--cache-dir", default=None, help="hidden-state cache root (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.reference_users = args.reference_users or (500 if args.quick else 3000)
    if not (SCIENTIFIC / "users.tsv").is_file():
        raise SystemExit(f"{SCIENTIFIC} not found (the shared datasets live beside the repository)")
    import tempfile

    model_dir, random_init, label = resolve_model(args.model)
    out = {"machine": machine()["name"], "model": label, "torch_threads": None, "rows": []}
    import torch

    out["torch_threads"] = torch.get_num_threads()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="a4r-eval-") as tmp:
        args.cache_dir = args.cache_dir or tmp
        scientific(args, model_dir, random_init, out)
        million(args, model_dir, random_init, out)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out["peaks"] = peaks({r["precision"] for r in out["rows"]}, device, torch.get_num_threads())
    clock = "wall" if device == "cuda" else "cpu"  # the clock of the roofline (train_step.py's rule)
    for r in out["rows"]:
        pk = out["peaks"][r["precision"]]
        if r.get("encode_flops") is not None:
            roofline(r, r["encode_flops"], r[f"encode_{clock}_s"], pk, "encode_")
            roofline(r, r["encode_flops"] + r["rank_flops"], r[f"eval_{clock}_s"], pk, "eval_")
        roofline(r, r["rank_flops"], r[f"rank_{clock}_s"], pk, "rank_")
    out["wall_s"] = round(time.time() - t0, 1)
    print(f"\nevaluate — {label}, {out['machine']}, {out['torch_threads']} torch threads, {out['wall_s']:.0f} s")
    print(f"{'size':13} {'users':>7} {'items':>9} {'encoder':28} {'unit':>4} {'encode s':>9} {'rank s':>8} "
          f"{'eval s':>8} {'ratio':>6} {'ref rank s':>10}")
    for r in out["rows"]:
        for unit in ("cpu", "wall"):
            enc = f"{r[f'encode_{unit}_s']:.1f}" + ("*" if r.get("encode_estimated") else "")
            ref = f"{r[f'reference_rank_{unit}_s']:.1f}" if f"reference_rank_{unit}_s" in r else "-"
            print(f"{r['size']:13} {r['users']:>7} {r['items']:>9} {r['encoder']:28} {unit:>4} {enc:>9} "
                  f"{r[f'rank_{unit}_s']:>8.1f} {r[f'eval_{unit}_s']:>8.1f} {r[f'eval_vs_encode_{unit}']:>6.3f} {ref:>10}")
    print("ratio: (encoding + ranking) / encoding.  * estimated from the measured items/s of the encoding "
          "pass.  cpu: process CPU seconds (the robust figure on a shared machine with one thread)")
    print(f"\nroofline ({clock} clock)       {'encode TFLOP/s':>15} {'peak':>6} {'rank TFLOP/s':>13} {'peak':>6}")
    for r in out["rows"]:
        def f(key, fmt):
            return format(r[key], fmt) if r.get(key) is not None else "-"
        print(f"{r['size']:13} {r['encoder'][:14]:14} {f('encode_tflops_s', '.4f'):>15} "
              f"{f('encode_peak_fraction', '.1%'):>6} {f('rank_tflops_s', '.4f'):>13} {f('rank_peak_fraction', '.1%'):>6}")
    for p, v in out["peaks"].items():
        print(f"peak {p}: torch.mm {v['n']}x{v['n']} {v['flops_s'] / 1e12:.3f} TFLOP/s measured ({v['clock']}); "
              f"nominal: {v['nominal_derivation']}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2), encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
