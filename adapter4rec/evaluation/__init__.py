"""Full-ranking metrics and the evaluator."""
from .evaluator import encode_all_items, evaluate, unreachable_targets
from .metrics import ranking_metrics, target_ranks

__all__ = ["ranking_metrics", "target_ranks", "evaluate", "encode_all_items", "unreachable_targets"]
