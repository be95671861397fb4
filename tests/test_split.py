"""Train/val/test split by article."""

from __future__ import annotations

import pytest

from editable_lm.errors import EditLMError
from editable_lm.params import SplitParams
from editable_lm.split import SPLITS, rows_in_split, split_articles

ARTICLES = list(range(200))


def test_every_article_in_exactly_one_split():
    """Every article gets one split; the sizes follow the fractions."""
    assignment = split_articles(ARTICLES * 2, SplitParams(val_frac=0.1, test_frac=0.1))  # duplicates ok
    assert sorted(assignment) == ARTICLES
    assert set(assignment.values()) == set(SPLITS)
    counts = {s: list(assignment.values()).count(s) for s in SPLITS}
    assert counts == {"train": 160, "val": 20, "test": 20}


def test_seeded():
    """Same seed, same split; another seed, another split (held-out articles and val/test alike)."""
    one, again, two = (split_articles(ARTICLES, SplitParams(seed=s)) for s in (1, 1, 2))
    assert one == again
    for split in SPLITS:
        assert {a for a, s in one.items() if s == split} != {a for a, s in two.items() if s == split}


def test_rows_in_split_partitions_rows():
    """Rows of the three splits are disjoint, cover all rows, and keep each article together."""
    rows = [{"id": i, "article_id": i % 50} for i in range(300)]
    assignment = split_articles([r["article_id"] for r in rows], SplitParams())
    parts = {s: rows_in_split(rows, assignment, s) for s in SPLITS}
    ids = [r["id"] for part in parts.values() for r in part]
    assert sorted(ids) == list(range(300))
    for split, part in parts.items():
        assert part and all(assignment[r["article_id"]] == split for r in part)
    articles = [{r["article_id"] for r in part} for part in parts.values()]
    assert not (articles[0] & articles[1] or articles[0] & articles[2] or articles[1] & articles[2])


@pytest.mark.parametrize("ids", [[], [5], [1, 2], [1, 1, 2, 2]])
def test_too_few_articles(ids):
    """Fewer than three distinct articles cannot fill three splits."""
    with pytest.raises(EditLMError, match="at least 3"):
        split_articles(ids, SplitParams())


@pytest.mark.parametrize("n", [3, 4, 5])
def test_few_articles_split_or_clear_error(n):
    """A handful of articles either splits into three non-empty splits or fails with EditLMError."""
    try:
        assignment = split_articles(list(range(n)), SplitParams())
    except EditLMError:
        return
    assert set(assignment.values()) == set(SPLITS)
