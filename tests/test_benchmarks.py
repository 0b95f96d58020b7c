"""The benchmarks' own machinery: the FLOP counter of the roofline columns, the peak derivations,
and benchmarks/gpu.sh's --dry run (the GPU script's code path on the CPU, so it cannot rot before
a GPU is there). Nothing here is timed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from adapter4rec.config import load_config
from adapter4rec.data.batching import TrainBatches
from adapter4rec.encoders.backbone import load_backbone
from adapter4rec.pipeline import prepare
from adapter4rec.runtime.seed import seed_everything

from conftest import overrides

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import roofline  # noqa: E402

H, I, B, S = 32, 64, 3, 7  # tiny_bert: hidden 32, FFN 64, 2 layers; a batch of 3 titles of 7 tokens


def linear_fwd():
    """One BERT layer's Linear FLOPs, by hand: Q, K, V and the attention output (h x h each),
    the FFN's two (h x I, I x h), over B * S tokens."""
    return 2 * B * S * (4 * H * H + 2 * H * I)


def attention_fwd():
    return 2 * (2 * B * S * S * H)  # QK^T and AV, all heads together


def run(backbone, trainable):
    for n, p in backbone.named_parameters():
        p.requires_grad_(trainable(n))
    ids = torch.randint(5, 20, (B, S), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0  # padding is computed all the same
    with FlopCounterMode(display=False) as ref, roofline.FlopCounter(backbone) as ours:
        out = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        if out.requires_grad:
            out.sum().backward()
    return ours, ref.get_total_flops()


@pytest.fixture
def bert(tiny_bert):
    return load_backbone(tiny_bert, random_init=True)


def test_forward_flops_are_the_hand_count(bert):
    ours, ref = run(bert, lambda n: False)
    assert ours.forward == 2 * (linear_fwd() + attention_fwd())
    assert ours.backward == 0
    assert ours.total == ref


def test_backward_counts_weight_grads_where_weights_train_and_input_grads_above_the_lowest(bert):
    # only layer 1 trains: layer 0 costs no backward; in layer 1 Q, K and V get weight gradients but
    # no input gradient (their input needs none), everything after them both, attention 2x
    ours, ref = run(bert, lambda n: ".layer.1." in n)
    qkv = 2 * B * S * 3 * H * H
    assert ours.backward == 2 * linear_fwd() - qkv + 2 * attention_fwd()
    assert ours.total == ref
    # everything trains (the embeddings too): every layer 2x its forward
    ours, ref = run(bert, lambda n: True)
    assert ours.backward == 2 * ours.forward
    assert ours.total == ref


@pytest.mark.parametrize("method", ["houlsby", "lora", "full", "iisan"])
def test_counter_matches_torch_on_a_library_training_step(domains, tiny_bert, tmp_path, method):
    """The whole model (the method's modules, the projection head, SASRec) on one step of the
    benchmark's objective: the module-shape count equals torch's own dispatch-level count."""
    cfg = load_config(overrides=overrides(domains[0], tiny_bert, peft__method=method, train__objective="bce",
                                          cache__dir=str(tmp_path)))
    seed_everything(0)
    data, model, content, _ = prepare(cfg)
    batch = TrainBatches(data, content, 16, "bce", seed=1)[0]
    with FlopCounterMode(display=False) as ref, roofline.FlopCounter(model) as ours:
        model(batch).backward()
    assert ours.total > 0 and ours.backward > 0
    # the BCE's dot products are element-wise (not counted by either); anything else must agree
    assert ours.total == ref.get_total_flops()


def test_cpu_nominal_peak_from_flags():
    info = {"cpu MHz": "2000.0", "flags": "fma avx avx2"}
    peak, how = roofline.cpu_nominal("fp32", 2, info)
    assert peak == 2 * 2.0e9 * 32 and "AVX2" in how
    info["flags"] += " avx512f avx512_bf16"
    assert roofline.cpu_nominal("fp32", 1, info)[0] == 2.0e9 * 64
    assert roofline.cpu_nominal("bf16", 1, info)[0] == 2.0e9 * 128
    info["flags"] += " amx_bf16"
    assert roofline.cpu_nominal("bf16", 1, info)[0] == 2.0e9 * 1024
    assert roofline.cpu_nominal("fp32", 1, {"flags": "sse2"})[0] is None


def test_peak_mm_and_roofline_fraction():
    p = roofline.peak_mm("fp32", "cpu", n=64, reps=1)
    assert p["flops_s"] > 0 and p["n"] == 64
    row = roofline.roofline({}, 10**9, 0.5, {"flops_s": 4e9})
    assert row == {"tflops_s": 0.002, "peak_fraction": 0.5}
    with pytest.raises(ValueError, match="precision"):
        roofline.peak_mm("int3")


def gpu_sh(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(A4R_WHEELS=str(tmp_path / "no-wheels"), A4R_SITE=str(tmp_path / "site"), PYTHON=sys.executable,
               OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry", "--out", str(tmp_path / "out"),
                           *args], capture_output=True, text=True, env=env, cwd=tmp_path)


def test_gpu_script_dry_run(tmp_path):
    proc = gpu_sh(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "gpu.json").read_text())
    md = (tmp_path / "out" / "gpu.md").read_text()
    assert result["finished"] and result["dry"]
    rows = {(r["model"], r["method"]): r for r in result["rows"]}
    import gpu

    assert list(rows) == gpu.ROWS
    for key, r in rows.items():
        assert not r.get("error") and not r.get("skipped"), (key, r)
        assert r["peak_fraction" if key[1] != "eval" else "eval_peak_fraction"] > 0, key
        assert f"| {key[0]} | {key[1]}" in md or key[1] == "eval"
    assert rows[("bert", "houlsby")]["flops_per_step"] > rows[("bert", "iisan-cached")]["flops_per_step"]
    assert rows[("bert", "houlsby-top2-prefix")]["cache_build"]["cache_mb"] > 0
    assert "epoch" in rows[("bert", "houlsby")]["targets"][0] and "n/a on CPU" in md
    assert "eval / encoding" in rows[("bert", "eval")]["targets"][0]


def test_gpu_script_cut_short_and_bad_rows(tmp_path):
    proc = gpu_sh(tmp_path, "--budget-s", "0", "--rows", "bert:houlsby,vit:lora")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert [r["skipped"] for r in result["rows"]] == ["time budget (0 s) spent"] * 2
    proc = gpu_sh(tmp_path, "--rows", "bert:nope")
    assert proc.returncode != 0 and "unknown --rows bert:nope" in proc.stderr.strip().splitlines()[-1]


def test_study_gpu_script_smoke(tmp_path):
    """scripts/study_scientific_gpu.sh (issue 17's GPU rows) end to end at the suite's smoke size:
    the same script, suite and report as on the GPU, tiny models on synthetic data."""
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(A4R_WHEELS=str(tmp_path / "no-wheels"), PYTHON=sys.executable, OMP_NUM_THREADS="1",
               OUT=str(tmp_path / "out"), A4R_STUDY_GPU_RUNS=str(tmp_path / "runs"))
    cmd = ["bash", str(ROOT / "scripts" / "study_scientific_gpu.sh"), "--smoke"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["device.txt", "report.md", "runs.csv",
                                                     "runs.pairs.csv", "runs.variants.csv", "suite.log"]
    assert (out / "device.txt").read_text().startswith("device: ")
    md = (out / "report.md").read_text()
    for method in ("houlsby", "full", "iisan"):
        assert f"/method={method} | {method} |" in md
    assert "## Source runs" in md and "[4/4] method=iisan: trained" in (out / "suite.log").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert again.returncode == 0 and "method=iisan: finished before, skipped" in again.stdout
