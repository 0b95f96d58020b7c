import math

import pytest
import torch

from adapter4rec.evaluation import ranking_metrics


def test_hand_computed_with_ties_and_exclusions():
    # columns: 0 = padding (never ranked), items 1..5
    scores = torch.tensor([
        [9.0, 0.1, 0.9, 0.5, 0.9, 0.2],  # target 2 ties with item 4: tie counts against -> rank 2
        [9.0, 0.8, 0.7, 0.9, 0.1, 0.0],  # target 2; item 3 excluded, item 1 ahead -> rank 2
        [0.0, 0.5, 0.4, 0.3, 0.2, 0.1],  # target 5 is last of 5 -> rank 5
        [0.0, 0.5, 0.4, 0.3, 0.2, 0.1],  # target 1 excluded -> can never be hit
    ])
    targets = torch.tensor([2, 2, 5, 1])
    exclude = [[], [3], [], [1, 2]]
    m = ranking_metrics(scores, targets, k=2, exclude=exclude)
    assert m["HR@2"] == pytest.approx(2 / 4)
    expected = (1 / math.log2(3) + 1 / math.log2(3)) / 4
    assert m["NDCG@2"] == pytest.approx(expected)
    m10 = ranking_metrics(scores, targets, k=10, exclude=exclude)
    assert m10["HR@10"] == pytest.approx(3 / 4)
    assert m10["NDCG@10"] == pytest.approx((2 / math.log2(3) + 1 / math.log2(6)) / 4)


def test_constant_model_scores_zero_and_padding_never_ranked():
    scores = torch.zeros(3, 20)
    assert ranking_metrics(scores, torch.tensor([1, 5, 19]))["HR@10"] == 0.0
    # a huge padding score does not push the target down
    s = torch.tensor([[100.0, 1.0, 2.0]])
    assert ranking_metrics(s, torch.tensor([2]), k=1)["HR@1"] == 1.0


def test_perfect_model():
    scores = torch.eye(6)[1:]  # user u scores item u+1 highest
    m = ranking_metrics(scores, torch.arange(1, 6), k=1)
    assert m == {"HR@1": 1.0, "NDCG@1": 1.0}


def test_bad_shapes():
    with pytest.raises(ValueError):
        ranking_metrics(torch.zeros(3), torch.zeros(3, dtype=torch.long))


# --- non-finite scores (a NaN is never a hit) ------------------------------------------------------

def test_all_nan_scores_are_misses():
    scores = torch.full((4, 12), float("nan"))
    assert ranking_metrics(scores, torch.tensor([1, 3, 5, 11])) == {"HR@10": 0.0, "NDCG@10": 0.0}


def test_a_nan_item_ranks_ahead_of_the_target():
    # target 1 has the best finite score; item 2 is NaN: it counts ahead, so the target is 2nd
    scores = torch.tensor([[0.0, 0.9, float("nan"), 0.1]])
    assert ranking_metrics(scores, torch.tensor([1]), k=1)["HR@1"] == 0.0
    assert ranking_metrics(scores, torch.tensor([1]), k=2)["NDCG@2"] == pytest.approx(1 / math.log2(3))


def test_chunk_ranks_agree_with_target_ranks_on_nan():
    from adapter4rec.evaluation.evaluator import chunk_ranks
    from adapter4rec.evaluation.metrics import target_ranks

    g = torch.Generator().manual_seed(0)
    scores = torch.rand(6, 9, generator=g)
    scores[0, 3] = float("nan")           # a NaN item
    scores[1] = float("nan")              # a NaN user
    scores[2, 4] = float("nan")           # the target itself NaN
    targets = torch.tensor([2, 5, 4, 1, 7, 8])
    exclude = torch.tensor([[3, 0], [0, 0], [1, 0], [0, 0], [2, 6], [8, 0]])
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    for u, row in enumerate(exclude.tolist()):
        for i in row:
            if i:
                mask[u, i] = True
    a = chunk_ranks(scores, targets, exclude)
    b = target_ranks(scores, targets, mask)
    assert torch.equal(a, b), (a, b)
    assert math.isinf(a[1]) and math.isinf(a[2]) and math.isinf(a[5])


# --- an independent oracle: ir-measures (trec_eval's nDCG and Success) -----------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_exclusions", [False, True])
def test_agrees_with_ir_measures_without_ties(seed, with_exclusions):
    """HR@k = Success@k and NDCG@k = nDCG@k (binary relevance, one relevant item per user), as
    trec_eval computes them through ir-measures, on random scores without ties. Column 0 (padding)
    and a user's excluded items are left out of the run handed to the oracle; an excluded target
    stays in the qrels and so is a miss there too."""
    import ir_measures
    from ir_measures import Success, nDCG

    g = torch.Generator().manual_seed(seed)
    users, items = 40, 30  # columns 0..items; item ids 1..items
    # every row a random permutation: no ties, exactly representable as float32
    scores = torch.stack([torch.randperm(items + 1, generator=g) for _ in range(users)]).float()
    targets = torch.randint(1, items + 1, (users,), generator=g)
    exclude = None
    if with_exclusions:
        exclude = [torch.randperm(items, generator=g)[:int(torch.randint(0, 8, (1,), generator=g))]
                   .add(1).tolist() for _ in range(users)]
        for u in range(0, users, 5):  # make sure some targets are excluded
            exclude[u] = sorted(set(exclude[u]) | {int(targets[u])})
    qrels = {f"u{u}": {f"i{int(targets[u])}": 1} for u in range(users)}
    run = {}
    for u in range(users):
        skip = set(exclude[u]) if exclude else set()
        run[f"u{u}"] = {f"i{i}": float(scores[u, i]) for i in range(1, items + 1) if i not in skip}
    for k in (1, 3, 5, 10, 25):
        ours = ranking_metrics(scores, targets, k=k, exclude=exclude)
        peer = ir_measures.calc_aggregate([Success @ k, nDCG @ k], qrels, run)
        assert ours[f"HR@{k}"] == pytest.approx(peer[Success @ k], abs=1e-6), k
        assert ours[f"NDCG@{k}"] == pytest.approx(peer[nDCG @ k], abs=1e-6), k
    if with_exclusions:  # the excluded targets really are misses on both sides
        assert ranking_metrics(scores, targets, k=items, exclude=exclude)["HR@30"] < 1.0
