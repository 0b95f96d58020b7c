"""Tables and plots of the GPSD suites (suites/gpsd.yaml, suites/gpsd_scaling.yaml) for
docs/results/gpsd/: per-epoch train / test AUC and loss per strategy (the generalisation gap) and
test AUC vs dense parameters under NT and ST&SF (the scaling curve).

    python scripts/gpsd_results.py [--runs runs/gpsd] [--out docs/results/gpsd]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STRATEGIES = ("NT", "FT", "ST", "FT_SF", "ST_SF")
SIZES = ("d16_l1", "d32_l2", "d64_l4", "d128_l2", "d256_l1", "d256_l3")


def _read(run: Path):
    if not (run / "metrics.json").is_file():
        return None
    final = json.loads((run / "metrics.json").read_text())
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    seconds = sum(e.get("epoch_seconds", 0) for e in epochs)
    return {"final": final, "epochs": epochs, "seconds": seconds}


def _label(s: str) -> str:
    return s.replace("_", "&")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/gpsd")
    ap.add_argument("--out", default="docs/results/gpsd")
    a = ap.parse_args(argv)
    runs, out = Path(a.runs), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lines, summary = [], {"strategies": {}, "scaling": {}, "pretrain": {}}

    lines += ["## Generative pretraining (full ranking, test)", "",
              "| dataset | best epoch | test HR@10 | test NDCG@10 | train s |", "|---|---|---|---|---|"]
    for ds in ("instrument", "scientific"):
        r = _read(runs / f"pretrain_{ds}")
        if r:
            t = r["final"]["test"]
            summary["pretrain"][ds] = r["final"]
            lines.append(f"| {ds} | {r['final']['best_epoch']} | {t['HR@10']:.4f} | {t['NDCG@10']:.4f} "
                         f"| {r['final']['train_seconds']:.0f} |")

    lines += ["", "## Discriminative training per strategy (AUC vs 50 fixed negatives, 2000 users)", "",
              "| dataset | strategy | best epoch (valid AUC) | test AUC at best | test AUC per epoch | "
              "train AUC per epoch | train loss per epoch | test loss per epoch | trainable / total |",
              "|---|---|---|---|---|---|---|---|---|"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, ds in enumerate(("instrument", "scientific")):
        for s in STRATEGIES:
            r = _read(runs / "suite" / f"data={ds},transfer={s}")
            if not r:
                continue
            f, ep = r["final"], r["epochs"]
            summary["strategies"][f"{ds}/{_label(s)}"] = {
                "best_epoch": f["best_epoch"], "test": f["test"], "valid": f["valid"],
                "epochs": [{k: e[k] for k in ("epoch", "train_loss", "train", "valid", "test")}
                           for e in ep],
                "transfer": f.get("transfer"), "trainable": f["trainable_params"],
                "total": f["total_params"]}
            fmt = lambda xs: " ".join(f"{x:.3f}" for x in xs)  # noqa: E731
            lines.append(
                f"| {ds} | {_label(s)} | {f['best_epoch']} | {f['test']['AUC']:.4f} | "
                f"{fmt(e['test']['AUC'] for e in ep)} | {fmt(e['train']['AUC'] for e in ep)} | "
                f"{fmt(e['train']['loss'] for e in ep)} | {fmt(e['test']['loss'] for e in ep)} | "
                f"{f['trainable_params']} / {f['total_params']} |")
            x = [e["epoch"] + 1 for e in ep]
            line, = axes[0, col].plot(x, [e["test"]["AUC"] for e in ep], marker="o", label=_label(s))
            axes[0, col].plot(x, [e["train"]["AUC"] for e in ep], ls="--", color=line.get_color())
            axes[1, col].plot(x, [e["test"]["loss"] for e in ep], marker="o", color=line.get_color(),
                              label=_label(s))
            axes[1, col].plot(x, [e["train"]["loss"] for e in ep], ls="--", color=line.get_color())
        axes[0, col].set_title(f"Amazon {ds}: AUC (solid test, dashed train)")
        axes[1, col].set_title(f"Amazon {ds}: BCE (solid test, dashed train split)")
        for ax in axes[:, col]:
            ax.set_xlabel("epoch")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "generalisation_gap.png", dpi=110)
    plt.close(fig)

    lines += ["", "## Model-size sweep on Scientific (test AUC at the best valid epoch)", "",
              "| size | dense params | sparse params | NT test AUC | ST&SF test AUC | NT last-epoch train-test AUC gap |",
              "|---|---|---|---|---|---|"]
    curve = {"NT": [], "ST_SF": []}
    for size in SIZES:
        row = {}
        for s in ("NT", "ST_SF"):
            folder = (runs / "suite" / f"data=scientific,transfer={s}" if size == "d64_l4"
                      else runs / "scaling" / f"size={size},transfer={s}")
            r = _read(folder)
            if r:
                row[s] = r
        if not row:
            continue
        any_run = next(iter(row.values()))["final"]
        t = any_run.get("transfer") or {}
        dense, sparse = t.get("dense_params"), t.get("sparse_params")
        gap = ""
        if "NT" in row:
            last = row["NT"]["epochs"][-1]
            gap = f"{last['train']['AUC'] - last['test']['AUC']:.3f}"
        cells = []
        for s in ("NT", "ST_SF"):
            if s in row:
                auc = row[s]["final"]["test"]["AUC"]
                curve[s].append((dense, auc))
                cells.append(f"{auc:.4f}")
            else:
                cells.append("n/a")
        summary["scaling"][size] = {"dense_params": dense, "sparse_params": sparse,
                                    **{s: row[s]["final"]["test"] for s in row}}
        lines.append(f"| {size} | {dense} | {sparse} | {cells[0]} | {cells[1]} | {gap} |")
    fig, ax = plt.subplots(figsize=(6, 4))
    for s, pts in curve.items():
        if pts:
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=_label(s))
    ax.set_xscale("log")
    ax.set_xlabel("dense parameters")
    ax.set_ylabel("test AUC")
    ax.set_title("GPSD scaling on Amazon Scientific (CPU budget)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    plt.close(fig)
    (out / "tables.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
