"""Metric definitions on logits and per-edit rows; no model is run here."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from editable_lm.editing import IGNORE, token_logprobs


def edit_success(logits: Tensor, labels: Tensor) -> Tensor:
    """Per example [B]: every labelled token is the argmax of the model's prediction."""
    hits = logits[:, :-1].argmax(-1) == labels[:, 1:]
    labelled = labels[:, 1:] != IGNORE
    return (hits | ~labelled).all(-1)


def sequence_logprob(logits: Tensor, labels: Tensor) -> Tensor:
    """Per example [B]: summed log-probability of the labelled tokens."""
    logp, _ = token_logprobs(logits, labels)
    return logp.sum(-1)


def perplexity(logits: Tensor, labels: Tensor) -> float:
    """exp of the mean next-token negative log-likelihood over all labelled tokens."""
    logp, mask = token_logprobs(logits, labels)
    return math.exp(-(logp.sum() / mask.sum()).item())


def relative_drawdown(ppl_pre: float, ppl_post: float) -> float:
    """How much worse perplexity got, relative: 0 means untouched, 0.1 means 10% higher."""
    return ppl_post / ppl_pre - 1.0


def top1_agreement(pre_logits: Tensor, post_logits: Tensor, attention_mask: Tensor) -> float:
    """Fraction of real tokens where the edited model's top next token is the unedited one's."""
    same = (pre_logits.argmax(-1) == post_logits.argmax(-1)) & attention_mask.bool()
    return (same.sum() / attention_mask.sum()).item()


def bootstrap_ci(values, n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def summarize(rows: list[dict], keys: tuple[str, ...], n_bootstrap: int = 0, seed: int = 0) -> dict[str, float]:
    """Mean of each key over the rows that have it, with `_low`/`_high` bootstrap bounds if asked.

    Rows where a key is None (e.g. an edit without generality probes) do not count for that key;
    `{key}_n` then says how many did.
    """
    summary = {}
    for key in keys:
        values = [row[key] for row in rows if row.get(key) is not None]
        if not values:
            continue
        summary[key] = float(np.mean(values))
        if len(values) < len(rows):
            summary[f"{key}_n"] = len(values)
        if n_bootstrap:
            summary[f"{key}_low"], summary[f"{key}_high"] = bootstrap_ci(values, n_bootstrap, seed)
    return summary
