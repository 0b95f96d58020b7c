"""DDP plumbing: no process group unless launched by torchrun (WORLD_SIZE set).

The backend follows the device: nccl on CUDA, gloo on CPU.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as td


def active() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if active() else 0


def world() -> int:
    return td.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def setup() -> torch.device:
    """Join the process group when torchrun started us; return this process's device."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not active():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        td.init_process_group("nccl" if cuda else "gloo")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def teardown() -> None:
    """Leave the process group once a command has finished. Left to the interpreter's exit, gloo's
    worker threads are destroyed in no fixed order and a rank can die of SIGABRT ("terminate called
    without an active exception", pytorch#190489) after its run finished, so torchrun reports it
    failed. Called on success only: destroying while another rank still waits in a collective can
    hang (torchtitan#1342); a failed command exits and lets torchrun stop the others."""
    if active():
        td.destroy_process_group()


def shard_range(n: int, r: int, w: int) -> tuple[int, int]:
    """Contiguous shard [lo, hi) of n elements for rank r of w (sizes differ by at most 1)."""
    base, extra = divmod(n, w)
    lo = r * base + min(r, extra)
    return lo, lo + base + (r < extra)


def _gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    w = world()
    sizes = [shard_range(n, r, w)[1] - shard_range(n, r, w)[0] for r in range(w)]
    if len(local) != sizes[rank()]:
        raise RuntimeError(f"rank {rank()} holds {len(local)} rows, its shard of {n} is {sizes[rank()]}")
    # all_gather wants equal shapes: pad every shard to the largest, then trim
    big = max(sizes)
    padded = torch.cat([local, local.new_zeros(big - len(local), *local.shape[1:])])
    parts = [torch.empty_like(padded) for _ in range(w)]
    td.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


class _GatherRows(torch.autograd.Function):
    """``gather_rows`` with a backward: each rank gets the sum over ranks of the gradient of its
    own rows (every rank's loss used them), so the encoder that produced a row learns from all."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, n: int) -> torch.Tensor:
        ctx.n = n
        return _gather_rows(local.detach(), n)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        td.all_reduce(grad)
        lo, hi = shard_range(ctx.n, rank(), world())
        return grad[lo:hi], None


def gather_rows(local: torch.Tensor, n: int, grad: bool = False) -> torch.Tensor:
    """Concatenate every rank's contiguous shard (from ``shard_range``) into all n rows.

    With ``grad`` the result is differentiable: gradients flow back to the rank that computed each
    row (used in training, where each rank encodes a shard of the global batch's items).
    """
    if world() == 1:
        return local
    if grad and torch.is_grad_enabled() and local.requires_grad:
        return _GatherRows.apply(local, n)
    return _gather_rows(local, n)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if active():
        td.all_reduce(t)
    return t


def barrier() -> None:
    if active():
        td.barrier()


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] without a process group)."""
    if not active():
        return [obj]
    out = [None] * world()
    td.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    if not active():
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]
