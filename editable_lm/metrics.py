"""Metric definitions on logits and per-edit rows; no model is run here."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from editable_lm.editing import label_logprobs
from editable_lm.split_forward import Targets, upcast


def edit_success(logits: Tensor, targets: Targets) -> Tensor:
    """Per example [B] from logits [N, V] at the labelled positions: every label is the argmax."""
    misses = (logits.argmax(-1) != targets.tokens).to(torch.long)
    return torch.zeros(targets.n_rows, dtype=torch.long, device=logits.device).index_add(0, targets.rows, misses) == 0


def sequence_logprob(logits: Tensor, targets: Targets) -> Tensor:
    """Per example [B] from logits [N, V] at the labelled positions: summed log-probability of the labels."""
    logp = torch.log_softmax(upcast(logits), dim=-1).gather(-1, targets.tokens.unsqueeze(-1)).squeeze(-1)
    return torch.zeros(targets.n_rows, dtype=logp.dtype, device=logp.device).index_add(0, targets.rows, logp)


def perplexity(logprobs: Tensor, labels: Tensor) -> float:
    """exp of the mean next-token negative log-likelihood over all labelled tokens, from log-probabilities [B, T, V]."""
    logp, mask = label_logprobs(logprobs, labels)
    return math.exp(-(logp.sum() / mask.sum()).item())


def relative_drawdown(ppl_pre: float, ppl_post: float) -> float:
    """How much worse perplexity got, relative: 0 means untouched, 0.1 means 10% higher."""
    return ppl_post / ppl_pre - 1.0


def bootstrap_ci(values, n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap(a, b, n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Mean of the paired differences a - b (same items, same order) with a percentile bootstrap interval,
    and their median."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    low, high = bootstrap_ci(diff, n_resamples, seed, level)
    return {"mean": float(diff.mean()), "low": low, "high": high, "median": float(np.median(diff)), "n": int(len(diff))}


# A strong edit can blow perplexity up by orders of magnitude on a few edits; their mean then says
# little about the typical edit, so these also get a median.
HEAVY_TAILED = ("ppl_drawdown", "ppl_post", "kl")


def summarize(rows: list[dict], keys: tuple[str, ...], n_bootstrap: int = 0, seed: int = 0) -> dict[str, float]:
    """Mean of each key over the rows that have it, with `_low`/`_high` bootstrap bounds if asked
    (and `_median` for the heavy-tailed ones).

    Rows where a key is None (e.g. an edit without generality probes) do not count for that key;
    `{key}_n` then says how many did.
    """
    summary = {}
    for key in keys:
        values = [row[key] for row in rows if row.get(key) is not None]
        if not values:
            continue
        summary[key] = float(np.mean(values))
        if key in HEAVY_TAILED:
            summary[f"{key}_median"] = float(np.median(values))
        if len(values) < len(rows):
            summary[f"{key}_n"] = len(values)
        if n_bootstrap:
            summary[f"{key}_low"], summary[f"{key}_high"] = bootstrap_ci(values, n_bootstrap, seed)
    return summary


def summarize_by(rows: list[dict], group: str, keys: tuple[str, ...], n_bootstrap: int = 0, seed: int = 0) -> dict[str, dict]:
    """`summarize` per value of `rows[i][group]`, in order of first appearance."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row[group], []).append(row)
    return {name: summarize(members, keys, n_bootstrap, seed) for name, members in groups.items()}


def paired_differences(
    rows: list[dict], comparisons: list[tuple[str, str]], keys: tuple[str, ...], n_bootstrap: int, seed: int = 0
) -> dict[str, dict]:
    """For each (a, b) in `comparisons` and each procedure: `paired_bootstrap` of model a - model b per key,
    over the edits (`edit_id`) both were measured on with that procedure and where both have the key
    (not None: generality needs probes, fluency is measured on a subset); a key no edit has is left out."""
    index = {(r["model"], r["procedure"], r["edit_id"]): r for r in rows}
    out: dict[str, dict] = {}
    for a, b in comparisons:
        for procedure in dict.fromkeys(r["procedure"] for r in rows if r["model"] == a):
            ids = [i for (m, p, i) in index if m == a and p == procedure and (b, p, i) in index]
            differences = {}
            for key in keys:
                both = [(index[a, procedure, i].get(key), index[b, procedure, i].get(key)) for i in ids]
                both = [(x, y) for x, y in both if x is not None and y is not None]
                if both:
                    differences[key] = paired_bootstrap([x for x, _ in both], [y for _, y in both], n_bootstrap, seed)
            out.setdefault(f"{a}-{b}", {})[procedure] = differences
    return out


def headline(summary: dict, models: tuple[str, ...], keys: tuple[str, ...], comparisons: tuple[str, ...]) -> dict:
    """The few numbers `dvc metrics show` should print: each model's unedited figures and, per procedure, the means
    of `keys`; the mean paired difference of each comparison (`a-b`). Bounds and the rest stay in `summary`."""
    out = {}
    for label in models:
        model = summary[label]
        out[label] = {key: value for key, value in model.items() if key.endswith("_unedited")}
        for procedure, figures in model.items():
            if isinstance(figures, dict):
                out[label][procedure] = {key: figures[key] for key in keys if key in figures}
    for comparison in comparisons:
        out[comparison] = {
            procedure: {key: d[key]["mean"] for key in keys if key in d}
            for procedure, d in summary["differences"][comparison].items()
        }
    return out
