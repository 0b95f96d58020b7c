"""Full-ranking evaluation time against its item-encoding pass alone (target: at most 1.2x).

    python benchmarks/evaluate.py [--quick] [--model minilm|bert-base|DIR] [--json PATH]

Two sizes:
- ``scientific`` -- about 10k users x 20k items: the real Amazon Scientific data (12,076 users,
  20,825 items) with the text item encoder (all-MiniLM-L6-v2 by default), ``train.amp: auto``.
  Timed: the item-encoding pass alone (``encode_all_items``), then one validation pass of the
  library (``evaluate(..., splits=("valid",))``: encoding + every user ranked over every item, in
  chunks). Also timed, for comparison, ranking as the reference did (one user at a time, a full
  argsort of all items per user) on a sample of users, scaled to all of them; and (not in
  ``--quick``) the same validation pass for ``iisan`` reading the hidden-state cache (the backbone
  does not run: the encoding pass is a read of the cache plus the side network).
- ``synthetic-1m`` -- 100k users x 1M items: the ranking of the library over random item vectors
  is timed (``--quick``: 10k of the users, scaled by 10); encoding 1M titles is not run on a CPU but
  estimated from the items/second of the encoding pass measured above (the pass is linear in the
  items). Peak memory of the ranking (above the item matrix) shows that it is bounded: scores are
  computed for chunks of users at most ``SCORE_BUDGET`` elements wide.

CPU time is shared with whatever else runs on the machine: compare figures within one run.
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

from train_step import SCIENTIFIC, machine, peak_mb, reset_peak, resolve_model, rss_mb  # noqa: E402


def reference_ranking(model, items, data, split, users) -> float:
    """Seconds to rank ``users`` one at a time with a full argsort, as the reference did."""
    import torch

    from adapter4rec.data.dataset import left_pad

    L = data.max_seq_len
    t0 = time.perf_counter()
    with torch.no_grad():
        for u in users:
            hist = torch.from_numpy(left_pad(data.history(u, split), L))[None]
            vec = model.user_vectors(items[hist], hist > 0)[0]
            scores = items @ vec
            scores[torch.from_numpy(data.history(u, split))] = -np.inf
            scores[0] = -np.inf
            order = torch.argsort(scores, descending=True)
            int((order == data.target(u, split)).nonzero()[0, 0]) + 1
    return time.perf_counter() - t0


def scientific(args, model_dir, random_init, out: dict) -> None:
    import torch

    from adapter4rec.config import load_config
    from adapter4rec.evaluation.evaluator import encode_all_items, evaluate
    from adapter4rec.training.trainer import amp_dtype, prepare, setup_logging

    setup_logging()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sets = [f"data.path={SCIENTIFIC}", f"model.pretrained={model_dir}",
            f"model.random_init={str(random_init).lower()}", "train.progress=false", "peft.method=frozen"]
    cfg = load_config(overrides=sets)
    data, model, content, _ = prepare(cfg)
    model.to(device).eval()
    amp = amp_dtype(cfg, device)
    bs = cfg.eval.item_batch_size
    row = {"size": "scientific", "users": data.n_users, "items": data.n_items, "encoder": "backbone",
           "precision": "bf16" if amp else "fp32"}
    t = time.perf_counter()
    items = encode_all_items(model, content, device, bs, amp)
    row["encode_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    res = evaluate(model, content, data, device, splits=("valid",), batch_size=cfg.eval.batch_size,
                   item_batch_size=bs, amp_dtype=amp)
    row["eval_s"] = round(time.perf_counter() - t, 2)
    row["rank_s"] = round(row["eval_s"] - row["encode_s"], 2)
    row["eval_vs_encode"] = round(row["eval_s"] / row["encode_s"], 3)
    row["valid_ndcg10"] = round(res["valid"]["NDCG@10"], 4)
    n = min(data.n_users, args.reference_users)
    ref = reference_ranking(model, items, data, "valid", range(n))
    row["reference_rank_s"] = round(ref * data.n_users / n, 2)
    row["reference_rank_users_timed"] = n
    out["items_per_s"] = data.n_items / row["encode_s"]
    out["rows"].append(row)
    del model, content, items

    if args.quick:
        return
    cfg = load_config(overrides=sets[:-1] + ["peft.method=iisan", f"cache.dir={args.cache_dir}"])
    t = time.perf_counter()
    data, model, content, _ = prepare(cfg)  # builds the cache on first use
    build = time.perf_counter() - t
    model.to(device).eval()
    row = {"size": "scientific", "users": data.n_users, "items": data.n_items,
           "encoder": "iisan (hidden-state cache)", "precision": "bf16" if amp else "fp32",
           "cache_prepare_s": round(build, 2)}
    t = time.perf_counter()
    encode_all_items(model, content, device, bs, amp)
    row["encode_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    evaluate(model, content, data, device, splits=("valid",), batch_size=cfg.eval.batch_size,
             item_batch_size=bs, amp_dtype=amp)
    row["eval_s"] = round(time.perf_counter() - t, 2)
    row["rank_s"] = round(row["eval_s"] - row["encode_s"], 2)
    row["eval_vs_encode"] = round(row["eval_s"] / row["encode_s"], 3)
    out["rows"].append(row)


def million(args, out: dict) -> None:
    import torch

    from adapter4rec.data.dataset import RecData
    from adapter4rec.encoders.sasrec import SASRec
    from adapter4rec.evaluation.evaluator import SCORE_BUDGET, rank_users
    from adapter4rec.model import Recommender

    n_items, n_users = args.million_items, args.million_users
    timed_users = n_users // 10 if args.quick else n_users
    rng = np.random.default_rng(0)
    lens = rng.integers(5, 16, size=timed_users)
    seqs = [rng.integers(1, n_items + 1, size=k) for k in lens]
    data = RecData(item_ids=[f"i{i}" for i in range(n_items)], texts=[], user_ids=[str(u) for u in range(timed_users)],
                   seqs=seqs, max_seq_len=10)
    torch.manual_seed(0)
    model = Recommender(torch.nn.Identity(), SASRec(64, 10)).eval()
    items = torch.randn(n_items + 1, 64)
    items[0] = 0
    base = rss_mb()
    reset_peak()
    t = time.perf_counter()
    r = rank_users(model, items, data, "valid", torch.device("cpu"))
    rank_s = (time.perf_counter() - t) * n_users / timed_users
    assert len(r) == timed_users
    enc_est = n_items / out["items_per_s"]
    out["rows"].append({"size": "synthetic-1m", "users": n_users, "items": n_items,
                        "encoder": "backbone (encoding estimated)", "encode_s": round(enc_est, 1),
                        "encode_estimated": True, "rank_s": round(rank_s, 1),
                        "rank_users_timed": timed_users, "eval_s": round(enc_est + rank_s, 1),
                        "eval_vs_encode": round((enc_est + rank_s) / enc_est, 3),
                        "rank_peak_mem_mb": round(peak_mb() - base, 1),
                        "score_chunk_users": max(1, min(256, SCORE_BUDGET // (n_items + 1)))})


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="minilm", help="minilm | bert-base (random weights) | a folder")
    ap.add_argument("--reference-users", type=int, default=None,
                    help="users ranked the reference's way (scaled to all users)")
    ap.add_argument("--million-items", type=int, default=1_000_000)
    ap.add_argument("--million-users", type=int, default=100_000)
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
        million(args, out)
    out["wall_s"] = round(time.time() - t0, 1)
    print(f"\nevaluate — {label}, {out['machine']}, {out['wall_s']:.0f} s")
    print(f"{'size':13} {'users':>7} {'items':>9} {'encoder':28} {'encode s':>9} {'eval s':>8} "
          f"{'ratio':>6} {'rank s':>7} {'ref rank s':>10}")
    for r in out["rows"]:
        enc = f"{r['encode_s']:.1f}" + ("*" if r.get("encode_estimated") else "")
        ref = f"{r['reference_rank_s']:.1f}" if "reference_rank_s" in r else "-"
        print(f"{r['size']:13} {r['users']:>7} {r['items']:>9} {r['encoder']:28} {enc:>9} {r['eval_s']:>8.1f} "
              f"{r['eval_vs_encode']:>6.3f} {r['rank_s']:>7.1f} {ref:>10}")
    print("* estimated from the measured items/s of the encoding pass")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2), encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
