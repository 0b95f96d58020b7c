"""Top-k recommendations for given histories (RecBole's ``full_sort_topk``), beside the evaluator:
the model itself never imports evaluation."""
from __future__ import annotations

import numpy as np
import torch

from ..data.batching import left_pad
from ..errors import ConfigError, DataError
from .evaluator import encode_all_items


@torch.no_grad()
def recommend(model, histories, k: int = 10, exclude_history: bool = True,
              batch_size: int = 256) -> list[list[tuple[str, float]]]:
    """For each history (a list of the dataset's own item ids, oldest first) the ``k`` best items
    as ``(item_id, score)``, best first; items of the history are left out with
    ``exclude_history``. ``model`` is a ``Recommender`` built by ``build_model`` (it holds its
    content store and item ids); its last ``max_seq_len`` items of a history are used."""
    if model.content is None or model.item_ids is None:
        raise DataError("the model holds no items: build it with adapter4rec.build_model")
    if not getattr(model, "yields_user_vectors", True):
        raise ConfigError("recommend ranks the catalogue by user vectors, and a discriminative model "
                          "(train.objective: discriminative) has none: it scores given candidates "
                          "(Recommender.candidate_scores)")
    index = {item: n + 1 for n, item in enumerate(model.item_ids)}
    rows = []
    for u, history in enumerate(histories):
        unknown = [i for i in history if i not in index]
        if unknown:
            raise DataError(f"history {u}: item ids not in the model's items: "
                            f"{', '.join(map(repr, unknown[:5]))}")
        rows.append(np.array([index[i] for i in history], dtype=np.int64))
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    items = encode_all_items(model, model.content, device)
    length = model.user_encoder.max_len
    k = min(k, len(model.item_ids))
    out = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        hist = torch.from_numpy(np.stack([left_pad(h, length) for h in chunk])).to(device)
        scores = model.user_vectors(items[hist], hist > 0).float() @ model.target_matrix(items).T
        scores[:, 0] = -torch.inf  # padding is no item
        if exclude_history:
            for b, h in enumerate(chunk):
                scores[b, torch.as_tensor(h, device=device)] = -torch.inf
        top = scores.topk(k, dim=1)
        for vals, idx in zip(top.values.tolist(), top.indices.tolist()):
            out.append([(model.item_ids[j - 1], v) for j, v in zip(idx, vals) if j > 0 and v > -np.inf])
    model.train(was)
    return out
