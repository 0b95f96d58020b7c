"""Shared fixtures: small synthetic domains and a tiny random-weight BERT, made once per session."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

# Tiny models: one intra-op thread is faster than two fighting over 2 cores (and than spinning
# OpenMP workers when other processes share the machine), and every run of an exact comparison
# rounds the same way (as torchrun's processes, started with OMP_NUM_THREADS=1).
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session", autouse=True)
def _cache_root(tmp_path_factory):
    """Hidden-state and frozen-prefix caches of runs that name no cache.dir go to a temporary
    folder, not the user's ~/.cache/adapter4rec."""
    import os

    if "ADAPTER4REC_CACHE" not in os.environ:
        os.environ["ADAPTER4REC_CACHE"] = str(tmp_path_factory.mktemp("a4r-cache"))
    yield


@pytest.fixture(scope="session")
def domains(tmp_path_factory):
    """(source_dir, target_dir): small synthetic transfer pair."""
    from adapter4rec.data.synthetic import make_transfer_pair

    return make_transfer_pair(tmp_path_factory.mktemp("synthetic"), seed=0, source_users=400,
                              source_items=150, target_users=300, target_items=120)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    from adapter4rec.data.synthetic import write_tiny_bert

    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), hidden_size=32, num_layers=2,
                           num_heads=2, intermediate_size=64)


@pytest.fixture(scope="session")
def shared_datasets():
    p = SHARED / "datasets"
    if not (p / "amazon-scientific" / "users.tsv").is_file():
        pytest.skip(f"real datasets not found at {p} (they live in ../shared/datasets beside the repo)")
    return p


def overrides(data, bert=None, **kw):
    """--set style overrides for a quick CPU run."""
    sets = [f"data.path={data}", "train.progress=false", "train.amp=fp32"]
    sets.append(f"model.pretrained={bert}" if bert else "model.item_encoder=id")
    sets += [f"{k.replace('__', '.')}={v}" for k, v in kw.items()]
    return sets


def perturb(model, seed, scale=0.05):
    """Move every trainable parameter by seeded noise: stands for training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def torchrun_train(sets, output, cache_dir, nproc=2):
    """``adapter4rec train`` under torchrun (``nproc`` gloo ranks, one thread each) with --set
    ``sets`` and ``cache.dir``; the finished process (its return code checked)."""
    import os
    import subprocess
    import sys

    args = [a for s in sets for a in ("--set", s)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(nproc), "-m", "adapter4rec.cli", "train", "--output", str(output), *args,
           "--set", f"cache.dir={cache_dir}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    return p

