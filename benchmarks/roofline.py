"""Achieved FLOP/s against the device's peak: the roofline columns of the benchmarks.

``FlopCounter`` counts, from the shapes of the tensors each module actually receives (so the
tokens actually processed: distinct items only, titles trimmed, padding where it is computed),
the matrix-multiply FLOPs of a model's forward pass and of the backward pass autograd will run:

- a ``Linear`` over ``n`` rows: forward ``2 * n * in * out``; ``Conv2d``: ``2 * outputs * C_out *
  C_in * kh * kw / groups`` (ViT's patch embedding);
- attention (a module with query/key/value projections -- BERT, ViT, SASRec): ``QK^T`` and ``AV``,
  ``2 * S_q * S_k * width`` each per sequence, width = all heads' (the padding of a batch is
  computed by SDPA, so it counts);
- backward: a ``Linear``/``Conv2d`` costs one forward again for the weight gradient when its weight
  trains, and one more for the input gradient when its input requires grad -- which is so in every
  layer above the lowest trainable one, and nowhere in a frozen prefix or a ``no_grad`` pass.
  Attention has no weights: dQ and dK (one forward matmul each) where Q / K need a gradient,
  dA where either does and dV where V does -- ``2 x`` its forward above the lowest trainable
  layer, 1.5 x in a lowest layer where LoRA trains Q and V only (fused kernels compute all of
  dQ, dK, dV anyway; the count is the work needed).
- not counted: element-wise work (norms, softmax, GELU, dropout), embedding look-ups, the
  optimizer, and matmuls outside modules (the loss's dot products; a caller adds the ranking's
  ``users x items`` scores itself: ``score_flops``). Compacter's Kronecker weights are not
  ``Linear`` and are not counted.

``peak_mm`` is the best FLOP/s of ``torch.mm`` of two 4096 x 4096 matrices in a precision, measured
in the same process; ``nominal_peak`` is the published or derived figure, with its derivation.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import torch
from torch import nn

# Published dense tensor-core peaks (no sparsity), FLOP/s, by a substring of the device name:
# NVIDIA H100/H200 SXM datasheets (bf16 989.4 T; fp32 without TF32: 66.9 T), A100 (312 / 19.5 T).
GPU_PEAKS = [("H200", {"bf16": 989.4e12, "fp32": 66.9e12}, "NVIDIA H200 SXM datasheet, dense"),
             ("H100", {"bf16": 989.4e12, "fp32": 66.9e12}, "NVIDIA H100 SXM datasheet, dense"),
             ("A100", {"bf16": 312e12, "fp32": 19.5e12}, "NVIDIA A100 datasheet, dense")]


def _attention_projections(m: nn.Module):
    """(q, k, v) submodules of an attention module, under either naming, else None."""
    for names in (("query", "key", "value"), ("q_proj", "k_proj", "v_proj")):
        mods = [getattr(m, n, None) for n in names]
        if all(isinstance(x, nn.Module) for x in mods):
            return mods
    return None


def _first_tensor(args, kwargs):
    for x in list(args) + list(kwargs.values()):
        if isinstance(x, torch.Tensor):
            return x
    return None


class FlopCounter:
    """Context manager: forward and backward matmul FLOPs of every call inside ``modules``.

    ``forward``/``backward`` accumulate over the ``with`` block (the backward is counted when the
    forward runs, from what requires grad then: call ``.backward()`` on the loss inside the block
    or not, the count is that of the graph built). ``by_kind`` splits them (linear, conv, attention).
    """

    def __init__(self, *modules: nn.Module):
        self.modules = modules
        self.forward = self.backward = 0
        self.by_kind: dict[str, int] = {}
        self._handles = []

    @property
    def total(self) -> int:
        return self.forward + self.backward

    def reset(self) -> None:
        self.forward = self.backward = 0
        self.by_kind = {}

    def _add(self, kind: str, fwd: int, bwd: int) -> None:
        self.forward += fwd
        self.backward += bwd
        self.by_kind[kind] = self.by_kind.get(kind, 0) + fwd + bwd

    def _linear(self, m, args, out):
        x = args[0]
        f = 2 * x.numel() // x.shape[-1] * m.in_features * m.out_features
        self._add("linear", f, f * (int(m.weight.requires_grad) + int(x.requires_grad)))

    def _conv(self, m, args, out):
        x = args[0]
        kh, kw = m.kernel_size
        f = 2 * out.numel() * (m.in_channels // m.groups) * kh * kw
        self._add("conv", f, f * (int(m.weight.requires_grad) + int(x.requires_grad)))

    def _attention(self, m, args, kwargs, out):
        x = _first_tensor(args, kwargs)  # hidden states [B, S, h] (self-attention: S_q = S_k)
        if x is None or x.dim() != 3:
            return
        q, k, v = _attention_projections(m)
        width = getattr(q, "out_features", None) or x.shape[-1]
        b, s = x.shape[0], x.shape[1]
        u = 2 * b * s * s * width  # one of the two forward matmuls
        # Q, K, V need a gradient when the input does or their projection trains (LoRA on Q, V)
        gq, gk, gv = (x.requires_grad or any(p.requires_grad for p in t.parameters()) for t in (q, k, v))
        self._add("attention", 2 * u, u * (gq + gk + (gq or gk) + gv))

    def __enter__(self) -> "FlopCounter":
        seen = set()
        for root in self.modules:
            for m in root.modules():
                if id(m) in seen:
                    continue
                seen.add(id(m))
                if isinstance(m, nn.Linear):
                    self._handles.append(m.register_forward_hook(self._linear))
                elif isinstance(m, nn.Conv2d):
                    self._handles.append(m.register_forward_hook(self._conv))
                elif _attention_projections(m) is not None:
                    self._handles.append(m.register_forward_hook(self._attention, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def score_flops(users: int, items: int, dim: int) -> int:
    """The ranking's scores: ``users x dim`` times ``dim x items``."""
    return 2 * users * items * dim


# ------------------------------------------------------------------------------------------ peaks

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def peak_mm(precision: str, device: torch.device | str = "cpu", n: int = 4096, reps: int | None = None) -> dict:
    """Best FLOP/s of ``torch.mm`` of two ``n x n`` matrices in ``precision`` on ``device``.

    On CUDA: wall clock after synchronising, 3 warm-ups, best of ``reps`` (10). On the CPU: process
    CPU time (robust on a shared machine with one torch thread, as the benchmarks' CPU figures),
    1 warm-up, best of ``reps`` (2). fp32 on CUDA is plain fp32 (TF32 off: torch's default)."""
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {', '.join(DTYPES)}, got {precision!r}")
    device = torch.device(device)
    cuda = device.type == "cuda"
    reps = reps or (10 if cuda else 2)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=DTYPES[precision], generator=g)
    b = torch.randn(n, n, device=device, dtype=DTYPES[precision], generator=g)
    clock = time.perf_counter if cuda else time.process_time
    best = float("inf")
    for i in range((3 if cuda else 1) + reps):
        if cuda:
            torch.cuda.synchronize()
        t = clock()
        torch.mm(a, b)
        if cuda:
            torch.cuda.synchronize()
        if i >= (3 if cuda else 1):
            best = min(best, clock() - t)
    return {"precision": precision, "n": n, "flops_s": 2 * n ** 3 / best,
            "clock": "wall" if cuda else "process CPU time", "threads": None if cuda else torch.get_num_threads()}


def _cpuinfo() -> dict:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n")[0]
    out = {}
    for key in ("model name", "cpu MHz", "flags"):
        m = re.search(rf"^{key}\s*:\s*(.*)$", first, re.M)
        if m:
            out[key] = m.group(1).strip()
    return out


def cpu_nominal(precision: str, cores: int, info: dict | None = None) -> tuple[float | None, str]:
    """cores x clock x FLOP/cycle from /proc/cpuinfo's flags, and how it was derived.

    FLOP/cycle per core = 2 (an FMA is 2 FLOPs) x fp32 lanes (16 with AVX-512F, 8 with AVX2) x 2 FMA
    pipes (assumed: Intel since Haswell and AMD since Zen 2 have two; AMD Zen 4 runs AVX-512 as
    two 256-bit halves, which this overstates 2x); bf16 doubles it with AVX512_BF16 (pair dot
    products) and is 1024 per core with AMX-BF16; without either, bf16 matmuls convert to fp32 and
    the fp32 figure is the bound. Clock: /proc/cpuinfo's "cpu MHz" (the current, not the boost, clock)."""
    info = _cpuinfo() if info is None else info
    flags = set(info.get("flags", "").split())
    mhz = float(info["cpu MHz"]) if "cpu MHz" in info else None
    if mhz is None or "fma" not in flags:
        return None, "no cpu MHz or FMA flag in /proc/cpuinfo"
    lanes, isa = (16, "AVX-512F") if "avx512f" in flags else (8, "AVX2")
    per_cycle, how = 2 * lanes * 2, f"2 FLOP/FMA x {lanes} fp32 lanes ({isa}) x 2 FMA pipes"
    if precision == "bf16":
        if "amx_bf16" in flags:
            per_cycle, how = 1024, "1024 bf16 FLOP/cycle (AMX-BF16 tile unit)"
        elif "avx512_bf16" in flags:
            per_cycle, how = 2 * per_cycle, how + " x 2 (AVX512_BF16 pair dot products)"
        else:
            how += " (no bf16 units: bf16 runs as fp32)"
    peak = cores * mhz * 1e6 * per_cycle
    return peak, f"{cores} cores x {mhz / 1000:.2f} GHz x {per_cycle} FLOP/cycle = {peak / 1e9:.0f} GFLOP/s; {how}"


def nominal_peak(precision: str, device: torch.device | str = "cpu", cores: int = 1) -> tuple[float | None, str]:
    """The device's nominal peak in ``precision`` and its derivation (GPU: published figure)."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks, source in GPU_PEAKS:
            if key in name and precision in peaks:
                return peaks[precision], f"{peaks[precision] / 1e12:.1f} TFLOP/s {precision}: {source}"
        return None, f"no published figure on file for {name}"
    return cpu_nominal(precision, cores)


def peaks(precisions, device: torch.device | str = "cpu", cores: int = 1, n: int = 4096) -> dict:
    """{precision: measured and nominal peak} for each precision the rows use."""
    out = {}
    for p in sorted(set(precisions)):
        measured = peak_mm(p, device, n)
        nominal, how = nominal_peak(p, device, cores)
        out[p] = {**measured, "nominal_flops_s": nominal, "nominal_derivation": how}
    return out


def roofline(row: dict, flops: int, seconds: float, peak: dict | None, prefix: str = "") -> dict:
    """Add ``<prefix>tflops_s`` (achieved) and ``<prefix>peak_fraction`` (of the measured
    peak) to ``row`` for ``flops`` done in ``seconds``."""
    achieved = flops / seconds if seconds > 0 else None
    row[f"{prefix}tflops_s"] = round(achieved / 1e12, 4) if achieved else None
    row[f"{prefix}peak_fraction"] = (round(achieved / peak["flops_s"], 4) if achieved and peak else None)
    return row
