"""Runs the `adapter4rec` command line under probes, for tests/test_resume.py and tests/test_ddp.py.

    python tests/reliability_helper.py [--block-at-forward N] [--report DIR] -- train --output RUN ...
    torchrun --nproc_per_node 2 tests/reliability_helper.py --report DIR -- train --output RUN ...

--block-at-forward N  on the N-th training forward pass of this process, write DIR/blocked and
                      sleep until killed: a SIGKILL test then kills the run at a known point, with
                      no timing involved.
--poison N:R:KIND     on rank R's N-th call of the objective make the loss NaN (KIND loss) or,
                      the loss staying finite, its gradient (KIND gradient); repeatable.
--report DIR          at exit, write DIR/rank<r>.json: the item rows each evaluation encoded on
                      this rank, and every file operation under RUN made by a rank other than 0;
                      and DIR/grads<r>.pt: the gradients of the first update (after DDP's
                      all-reduce, before clipping), in the optimizer's parameter order.

Not a test module (pytest collects test_*.py only).
"""
from __future__ import annotations

import argparse
import builtins
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("--block-at-forward", type=int, default=0)
    p.add_argument("--report", default="")
    p.add_argument("--poison", action="append", default=[])
    args = p.parse_args(argv[:split])
    cli_args = argv[split + 1:]
    run = Path(cli_args[cli_args.index("--output") + 1] if "--output" in cli_args
               else cli_args[cli_args.index("--resume") + 1]).resolve()
    rank = int(os.environ.get("RANK", 0))
    report = Path(args.report) if args.report else None
    if report:
        report.mkdir(parents=True, exist_ok=True)

    from adapter4rec import cli, model as model_mod
    from adapter4rec.evaluation import evaluator

    # --- block at the N-th training forward -------------------------------------------------------
    calls = {"forward": 0}
    forward = model_mod.Recommender.forward

    def blocking_forward(self, batch):
        if self.training:
            calls["forward"] += 1
            if calls["forward"] == args.block_at_forward:
                (report / "blocked").write_text(str(calls["forward"]))
                while True:  # wait for SIGKILL
                    time.sleep(1)
        return forward(self, batch)

    if args.block_at_forward:
        model_mod.Recommender.forward = blocking_forward

    # --- poison the objective --------------------------------------------------------------------
    poison = {}
    for spec in args.poison:
        n, r, kind = spec.split(":")
        if int(r) == rank:
            poison[int(n)] = kind
    if poison:
        from adapter4rec.objectives import OBJECTIVES

        for name, orig in list(OBJECTIVES.items()):
            def objective(h, items, _orig=orig, **kw):
                calls["objective"] = calls.get("objective", 0) + 1
                loss = _orig(h, items, **kw)
                kind = poison.get(calls["objective"])
                if kind == "loss":
                    return loss * float("nan")
                if kind == "gradient":
                    return loss + (h.sum() * 0).sqrt()  # value + 0; gradient inf * 0 = NaN
                return loss
            OBJECTIVES[name] = objective

    # --- count item rows encoded by evaluation on this rank ---------------------------------------
    encoded: list[int] = []
    encode_all_items = evaluator.encode_all_items

    def counting_encode_all_items(model, content, *a, **kw):
        enc = model.item_encoder
        rows = [0]
        handle = enc.register_forward_hook(lambda m, i, out: rows.__setitem__(0, rows[0] + len(out)))
        try:
            return encode_all_items(model, content, *a, **kw)
        finally:
            handle.remove()
            encoded.append(rows[0])

    evaluator.encode_all_items = counting_encode_all_items

    # --- the gradients of the first update ---------------------------------------------------------
    if report:
        import torch

        clip = torch.nn.utils.clip_grad_norm_

        def recording_clip(params, *a, **kw):
            params = list(params)
            out = report / f"grads{rank}.pt"
            if not out.exists():
                torch.save([p.grad.detach().clone() for p in params], out)
            return clip(params, *a, **kw)

        torch.nn.utils.clip_grad_norm_ = recording_clip

    # --- record file operations under the run folder on ranks other than 0 ------------------------
    touched: list[str] = []
    if rank != 0:
        def under_run(path) -> bool:
            try:
                return Path(os.fsdecode(path)).resolve().is_relative_to(run)
            except (TypeError, ValueError):
                return False

        def wrap(mod, name, is_write):
            orig = getattr(mod, name)

            def probe(*a, **kw):
                if a and is_write(*a, **kw) and under_run(a[0]):
                    touched.append(f"{name} {a[0]}")
                return orig(*a, **kw)
            setattr(mod, name, probe)

        for mod in (builtins, io):  # open(), and io.open() (pathlib's write_text)
            wrap(mod, "open", lambda f, mode="r", *a, **kw: any(c in mode for c in "wax+"))
        wrap(os, "open", lambda f, flags, *a, **kw: bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
        for name in ("replace", "rename", "unlink", "mkdir", "makedirs", "rmdir"):
            wrap(os, name, lambda *a, **kw: True)
        wrap(shutil, "rmtree", lambda *a, **kw: True)

    try:
        return cli.main(cli_args)
    finally:
        if report:
            (report / f"rank{rank}.json").write_text(
                json.dumps({"rank": rank, "eval_rows": encoded, "touched": touched}))


if __name__ == "__main__":
    sys.exit(main())
