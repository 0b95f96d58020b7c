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
