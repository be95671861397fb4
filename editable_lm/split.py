"""Train/val/test split by article, so that no article feeds two splits."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupShuffleSplit

from editable_lm.errors import EditLMError
from editable_lm.params import SplitParams

SPLITS = ("train", "val", "test")


def split_articles(article_ids: list[int], params: SplitParams) -> dict[int, str]:
    """Assign every article to one split, seeded; returns `{article_id: split}`."""
    articles = np.array(sorted(set(article_ids)))
    if len(articles) < 3:
        raise EditLMError(f"split: need at least 3 articles, got {len(articles)}")
    held_out = params.val_frac + params.test_frac
    try:
        outer = GroupShuffleSplit(n_splits=1, test_size=held_out, random_state=params.seed)
        train_idx, rest_idx = next(outer.split(articles, groups=articles))
        rest = articles[rest_idx]
        inner = GroupShuffleSplit(n_splits=1, test_size=params.test_frac / held_out, random_state=params.seed)
        val_idx, test_idx = next(inner.split(rest, groups=rest))
    except ValueError as exc:  # sklearn: some split would be empty
        raise EditLMError(f"split: {len(articles)} articles are too few for these fractions ({exc})") from None
    assignment = {int(a): "train" for a in articles[train_idx]}
    assignment.update({int(a): "val" for a in rest[val_idx]})
    assignment.update({int(a): "test" for a in rest[test_idx]})
    return assignment


def rows_in_split(rows: list[dict], assignment: dict[int, str], split: str) -> list[dict]:
    """The rows (passages or pairs) whose article belongs to `split`."""
    return [row for row in rows if assignment[row["article_id"]] == split]
