"""`adapter4rec demo`: its printed numbers are the same from run to run (fp32, fixed threads,
seeded), with a standard error beside each."""
import numpy as np
import torch

from adapter4rec.experiments.demo import DEMO_THREADS, run_demo, standard_errors


def test_demo_is_reproducible_to_the_digits_it_prints(tiny_bert, tmp_path, capsys):
    torch.set_num_threads(2)
    small = dict(source_users=200, source_items=80, target_users=120, target_items=60)
    first = run_demo(tmp_path / "a", epochs=1, model=tiny_bert, progress=False, **small)
    assert torch.get_num_threads() == 2  # restored after the demo's own DEMO_THREADS
    printed = capsys.readouterr().out
    second = run_demo(tmp_path / "b", epochs=1, model=tiny_bert, progress=False, **small)
    assert first == second
    assert DEMO_THREADS == 1 and "±" in printed and "houlsby" in printed
    row = first[-1]
    assert 0 < row["HR@10_se"] < 0.1 and 0 < row["NDCG@10_se"] < row["HR@10_se"]


def test_standard_errors_from_ranks(tmp_path):
    ranks = np.array([1, 2, 11, np.inf, 3, 20], dtype=np.float32)
    np.savez(tmp_path / "ranks.npz", test=ranks, valid=ranks, epoch=0)
    se = standard_errors(tmp_path)
    hit = np.array([1, 1, 0, 0, 1, 0], dtype=float)
    assert abs(se["HR@10"] - hit.std(ddof=1) / np.sqrt(6)) < 1e-12
    nd = np.array([1, 1 / np.log2(3), 0, 0, 1 / np.log2(4), 0])
    assert abs(se["NDCG@10"] - nd.std(ddof=1) / np.sqrt(6)) < 1e-12
