"""Precision: the autocast dtype of a run, and what the machine's CPU can do."""
from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

import torch

log = logging.getLogger("adapter4rec")


def amp_dtype(amp: str, device: torch.device):
    """bf16 autocast or None (fp32) for ``train.amp`` (``auto`` | ``bf16`` | ``fp32``). ``auto``:
    bf16 on CUDA and on CPUs with bf16 matrix units (AMX-BF16 / AVX512-BF16), where it is about
    1.7x faster; fp32 on other CPUs."""
    if amp == "fp32":
        return None
    if amp == "bf16" or device.type == "cuda":
        return torch.bfloat16
    units = cpu_bf16_units()
    if not getattr(amp_dtype, "_said", None) == (amp, units):
        amp_dtype._said = (amp, units)  # say it once per process, not per evaluation
        log.info("train.amp auto: %s", f"bf16 autocast (this CPU has {units})" if units else
                 "fp32 (this CPU has no bf16 matrix units: bf16 would be slower)")
    return torch.bfloat16 if units else None


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (benchmarks record the machine they ran on)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_bf16_units() -> str:
    """The CPU's bf16 matrix units ("amx_bf16", "avx512_bf16"), "" when it has none: there bf16
    autocast is emulated and slower than fp32."""
    if os.environ.get("ADAPTER4REC_CPU_BF16") in ("0", "1"):  # override the detection
        return "bf16 units (ADAPTER4REC_CPU_BF16=1)" if os.environ["ADAPTER4REC_CPU_BF16"] == "1" else ""
    found = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    found = [u for u in ("amx_bf16", "avx512_bf16") if u in flags]
                    break
    except OSError:
        pass
    if not found:  # no /proc/cpuinfo (macOS, ...): ask PyTorch's own CPU probe
        cpu = getattr(torch, "cpu", None)
        for name, probe in (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")):
            try:
                if getattr(cpu, probe)():
                    found.append(name)
            except (AttributeError, RuntimeError):
                pass
    return ", ".join(found)
