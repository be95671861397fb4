"""Train/val/test split by article, so that no article feeds two splits."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupShuffleSplit

from editable_lm.errors import EditLMError
from editable_lm.params import Params, SplitParams

SPLITS = ("train", "val", "test")
KINDS = ("passages", "pairs")

# Where the evaluation stages draw each sample from: parameter -> the (split, kind of rows) it is drawn from.
SAMPLES = {
    "reliability.n_edits": [("test", "pairs")],
    "sweep.n_edits": [("val", "pairs"), ("test", "pairs")],
    "sequential.n_edits": [("test", "pairs")],
    "evaluate.n_ppl_passages": [("test", "passages")],
    "ft_kl.n_loc_passages": [("val", "passages")],
    "tune.n_edits": [("val", "pairs")],
    "tune.n_ppl_passages": [("val", "passages")],
    "validation.n_edits": [("val", "pairs")],
    "validation.n_ppl_passages": [("val", "passages")],
    "sweep.n_ppl_passages": [("val", "passages"), ("test", "passages")],
    "reliability.n_fluency_prompts": [("test", "passages")],
}


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


def sample_sizes(params: Params) -> dict[str, int]:
    """The sample sizes the evaluation stages will ask of the split (the keys of `SAMPLES`)."""
    return {key: getattr(getattr(params, key.split(".")[0]), key.split(".")[1]) for key in SAMPLES}


def check_split(counts: dict[tuple[str, str], int], samples: dict[str, int]) -> None:
    """Fail now, before any training, if a split is empty or smaller than a sample drawn from it.

    `counts[(split, kind)]`: rows per split and kind; `samples`: `sample_sizes(params)`.
    """
    for split in SPLITS:
        for kind in KINDS:
            if counts[split, kind] == 0:
                total = sum(counts[s, kind] for s in SPLITS)
                raise EditLMError(
                    f"split: the {split} split has no {_NOUN[kind]} ({total} in the whole corpus): the corpus is "
                    f"too small; raise data.max_articles (0 keeps every article) or change split.val_frac/test_frac"
                )
    for key, wanted in samples.items():
        for split, kind in SAMPLES[key]:
            have = counts[split, kind]
            if wanted > have:
                raise EditLMError(
                    f"{key}: {wanted} {_NOUN[kind]} wanted but the {split} split has {have}; "
                    f"lower {key} to at most {have}, or use a larger corpus (data.max_articles) or split.{split}_frac"
                )


_NOUN = {"passages": "passages", "pairs": "edit pairs"}
