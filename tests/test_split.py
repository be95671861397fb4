"""Train/val/test split by article."""

from __future__ import annotations

import pytest

from editable_lm.errors import EditLMError
from editable_lm.params import Params, SplitParams
from editable_lm.split import SAMPLES, SPLITS, check_split, rows_in_split, sample_sizes, split_articles

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
def test_few_articles_too_few_for_default_fractions(n):
    """With 10% + 10% held out, 3 to 5 articles hold out a single article, which cannot fill both val
    and test: a clear EditLMError naming the count, not sklearn's ValueError."""
    with pytest.raises(EditLMError, match=rf"^split: {n} articles are too few for these fractions \("):
        split_articles(list(range(n)), SplitParams())


def test_six_articles_fill_every_split():
    """Six articles are the fewest the default fractions split: 4 train, 1 val, 1 test, and the counts
    pass `check_split` (one row per article)."""
    assignment = split_articles(list(range(6)), SplitParams())
    assert sorted(assignment) == list(range(6))
    sizes = {s: list(assignment.values()).count(s) for s in SPLITS}
    assert sizes == {"train": 4, "val": 1, "test": 1}
    check_split({(s, kind): sizes[s] for s in SPLITS for kind in ("passages", "pairs")}, {})


@pytest.mark.parametrize(("n", "sizes"), [(3, (1, 1, 1)), (4, (1, 1, 2)), (5, (2, 1, 2))])
def test_few_articles_split_with_larger_fractions(n, sizes):
    """With 30% + 30% held out, three articles already fill the three splits, whatever the seed."""
    for seed in range(3):
        assignment = split_articles(list(range(n)), SplitParams(val_frac=0.3, test_frac=0.3, seed=seed))
        assert sorted(assignment) == list(range(n))
        assert tuple(list(assignment.values()).count(s) for s in SPLITS) == sizes


def counts(passages=(10, 5, 5), pairs=(10, 5, 5)) -> dict[tuple[str, str], int]:
    return {**{(s, "passages"): n for s, n in zip(SPLITS, passages)}, **{(s, "pairs"): n for s, n in zip(SPLITS, pairs)}}


def test_sample_sizes_read_the_evaluation_params():
    """One size per entry of SAMPLES, read from the dotted key it names."""
    params = Params(reliability={"n_edits": 7}, ft_kl={"n_loc_passages": 3})
    sizes = sample_sizes(params)
    assert set(sizes) == set(SAMPLES)
    assert sizes["reliability.n_edits"] == 7 and sizes["ft_kl.n_loc_passages"] == 3
    assert sizes["sequential.n_edits"] == params.sequential.n_edits


def test_check_split_accepts_samples_that_fit():
    check_split(counts(), {"reliability.n_edits": 5, "evaluate.n_ppl_passages": 5, "ft_kl.n_loc_passages": 5})


@pytest.mark.parametrize(
    ("split_counts", "message"),
    [
        (counts(pairs=(1, 0, 0)), "split: the val split has no edit pairs (1 in the whole corpus)"),
        (counts(pairs=(0, 3, 3)), "split: the train split has no edit pairs (6 in the whole corpus)"),
        (counts(passages=(4, 2, 0)), "split: the test split has no passages (6 in the whole corpus)"),
    ],
)
def test_check_split_refuses_an_empty_part(split_counts, message):
    """The corpus of one pair (data.max_articles: 15): fails in split, naming the cause."""
    with pytest.raises(EditLMError) as info:
        check_split(split_counts, {})
    assert str(info.value).startswith(message) and "data.max_articles" in str(info.value)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("sequential.n_edits", "sequential.n_edits: 6 edit pairs wanted but the test split has 5; lower sequential.n_edits to at most 5"),
        ("evaluate.n_ppl_passages", "evaluate.n_ppl_passages: 6 passages wanted but the test split has 5; lower"),
        ("ft_kl.n_loc_passages", "ft_kl.n_loc_passages: 6 passages wanted but the val split has 5; lower"),
        ("validation.n_edits", "validation.n_edits: 6 edit pairs wanted but the val split has 5; lower"),
    ],
)
def test_check_split_refuses_a_sample_larger_than_its_split(key, message):
    with pytest.raises(EditLMError) as info:
        check_split(counts(), {key: 6})
    assert str(info.value).startswith(message), str(info.value)
