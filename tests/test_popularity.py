"""The most-popular baseline (`adapter4rec popularity`): counts from the training sequences only,
ranks by the evaluator's rule, count ties broken into one strict order, and a run folder the
report reads and pairs like any run."""
from __future__ import annotations

import math

import numpy as np
import pytest

from adapter4rec.data.split import RecData
from adapter4rec.evaluation.popularity import evaluate_popularity, popularity_order, popularity_scores


def _data(seqs, n_items):
    return RecData([f"i{n}" for n in range(1, n_items + 1)], [""] * n_items,
                   [f"u{u}" for u in range(len(seqs))], [np.array(s) for s in seqs], max_seq_len=5)


def test_counts_come_from_the_training_sequences_only():
    # item 9 is every user's valid target and item 10 every test target: counting them would
    # make them the most popular items, a leak of the targets into the ranking
    d = _data([[1, 2, 3, 9, 10], [1, 2, 4, 9, 10], [1, 5, 6, 9, 10]], 10)
    counts = popularity_scores(d).numpy()
    assert counts.tolist() == [0, 3, 2, 1, 1, 1, 1, 0, 0, 0, 0]
    metrics, ranks = evaluate_popularity(d, k=10)
    # ranks by brute force: 1 + the items ahead of the target that are not in the history
    place = popularity_order(d).numpy()
    for split in ("valid", "test"):
        for u in range(d.n_users):
            t, hist = d.target(u, split), set(d.history(u, split).tolist())
            want = math.inf if t in hist else 1 + sum(
                1 for j in range(1, d.n_items + 1) if j != t and j not in hist and place[j] >= place[t])
            assert ranks[split][u] == want
    assert metrics["valid"]["HR@10"] == pytest.approx(np.mean(ranks["valid"] <= 10))


def test_count_ties_are_broken_into_one_strict_order_by_the_seed():
    # every item occurs once: the raw counts all tie, the evaluator counts a tie against the
    # target, and every target would rank last (HR@10 0): a most-popular list has an order
    seqs = [[u % 20 + 1, (u + 1) % 20 + 1, (u + 2) % 20 + 1, (u + 5) % 20 + 1, (u + 7) % 20 + 1]
            for u in range(20)]  # each item 3 times in the training sequences; targets among them
    d = _data(seqs, 20)
    place = popularity_order(d, seed=0).numpy()
    assert len(set(place[1:].tolist())) == 20  # strict
    counts = popularity_scores(d).numpy()
    assert all(counts[a] <= counts[b] for a, b in zip(np.argsort(place)[1:], np.argsort(place)[2:]))
    hits = evaluate_popularity(d, k=10, seed=0)[0]["valid"]["HR@10"]
    assert 0.2 < hits < 0.9  # 10 of the 17 candidates a user has are in the top 10
    assert evaluate_popularity(d, seed=3)[1]["test"].tolist() == \
        evaluate_popularity(d, seed=3)[1]["test"].tolist()  # reproducible


def test_a_popularity_run_folder_is_reported_and_paired_only_when_asked(tmp_path):
    from adapter4rec.cli import main
    from adapter4rec.config import load_config
    from adapter4rec.data.synthetic import make_transfer_pair
    from adapter4rec.experiments import report as rp
    from adapter4rec.training.trainer import train

    _, tgt = make_transfer_pair(tmp_path / "data", seed=0, source_users=60, source_items=30,
                                target_users=60, target_items=30)
    sets = ["model.item_encoder=id", "model.embedding_dim=16", "model.num_heads=2",
            "train.epochs=1", "train.batch_size=32", "train.progress=false", "train.amp=fp32",
            f"data.path={tgt}"]
    train(load_config(overrides=sets), tmp_path / "runs" / "full")
    train(load_config(overrides=sets + ["peft.method=houlsby"]), tmp_path / "runs" / "houlsby")
    cfg = tmp_path / "runs" / "full" / "config.yaml"
    assert main(["popularity", "--config", str(cfg), "--output", str(tmp_path / "runs" / "pop")]) == 0
    rep = rp.build([str(tmp_path / "runs")], pairs=["full*:popularity"], resamples=50)
    row = rep.variant_table.set_index("label").loc["popularity"]
    assert row["trainable"] == 0 and row["n"] == 1
    whys = {(r.A, r.B, r.why) for r in rep.pair_table.itertuples()}
    assert ("full scratch", "popularity", "--pair") in whys  # the same users: compared
    assert not any("popularity" in (a, b) for a, b, why in whys if why != "--pair")
    assert not rep.skipped
    # a trained run's folder is never overwritten by the baseline
    assert main(["popularity", "--config", str(cfg), "--output", str(tmp_path / "runs" / "full")]) == 2
    assert (tmp_path / "runs" / "full" / "config.yaml").read_text() == cfg.read_text()
    with pytest.raises(SystemExit):  # --config is required
        main(["popularity", "--output", str(tmp_path / "x")])
