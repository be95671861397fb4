"""Metric functions, on hand-made logits and known distributions."""

from __future__ import annotations

import math

import pytest
import torch

import numpy as np

from editable_lm.editing import IGNORE
from editable_lm.split_forward import Targets
from editable_lm.metrics import (
    bootstrap_ci, edit_success, headline, paired_bootstrap, paired_differences, perplexity, relative_drawdown,
    sequence_logprob, summarize,
)

V = 7


def one_hot_logits(next_tokens: list[list[int]]) -> torch.Tensor:
    """Logits whose argmax at position t is next_tokens[b][t]."""
    logits = torch.zeros(len(next_tokens), len(next_tokens[0]), V)
    for b, row in enumerate(next_tokens):
        for t, token in enumerate(row):
            logits[b, t, token] = 5.0
    return logits


def test_edit_success():
    """Success iff every labelled token is predicted; unlabelled positions do not matter."""
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4], [IGNORE, IGNORE, 3, 4], [IGNORE, IGNORE, 3, 4]])
    logits = one_hot_logits([
        [0, 3, 4, 0],  # predicts 3 then 4: hit (position 0 and the last one are not scored)
        [0, 3, 5, 0],  # second name token wrong
        [6, 3, 4, 6],  # wrong only where nothing is labelled
    ])
    targets = Targets.of(labels)
    assert edit_success(logits[targets.where], targets).tolist() == [True, False, True]


def test_uniform_logits():
    """Uniform logits: log-prob is n_labelled*log(1/V) per row, perplexity is V."""
    logits = torch.zeros(2, 5, V)
    labels = torch.tensor([[1, 2, 3, 4, 5], [IGNORE, IGNORE, IGNORE, 2, IGNORE]])
    targets = Targets.of(labels)
    torch.testing.assert_close(sequence_logprob(logits[targets.where], targets), torch.tensor([4, 1]) * math.log(1 / V))
    assert perplexity(torch.log_softmax(logits, -1), labels) == pytest.approx(V)


def test_perplexity_of_certain_model_is_one():
    """A model that puts all mass on the labels has perplexity 1 and log-prob 0."""
    labels = torch.tensor([[1, 2, 3, 4]])
    logits = one_hot_logits([[2, 3, 4, 0]]) * 100
    assert perplexity(torch.log_softmax(logits, -1), labels) == pytest.approx(1.0)
    targets = Targets.of(labels)
    assert sequence_logprob(logits[targets.where], targets).item() == pytest.approx(0.0, abs=1e-6)


def test_relative_drawdown():
    """0 when perplexity is unchanged, 0.1 when it rose by 10%."""
    assert relative_drawdown(10, 10) == 0
    assert relative_drawdown(10, 11) == pytest.approx(0.1)
    assert relative_drawdown(10, 9) == pytest.approx(-0.1)


def test_bootstrap_ci_of_a_bernoulli_mean():
    """2000 Bernoulli(0.3) draws: the 95% interval holds 0.3 and is about 2*1.96*sd wide."""
    values = (np.random.default_rng(0).random(2000) < 0.3).astype(float)
    low, high = bootstrap_ci(values, n_resamples=2000, seed=1)
    assert low < 0.3 < high and low < values.mean() < high
    expected = 2 * 1.96 * math.sqrt(0.3 * 0.7 / 2000)
    assert high - low == pytest.approx(expected, rel=0.1)
    assert bootstrap_ci(values, n_resamples=2000, seed=1) == (low, high)  # same seed, same interval
    assert bootstrap_ci(values, n_resamples=2000, seed=2) != (low, high)


def test_bootstrap_ci_of_constant_values_has_zero_width():
    """Every resample of a constant has the same mean: a zero-width interval at that value."""
    low, high = bootstrap_ci([0.7] * 50, n_resamples=200)
    assert low == high and low == pytest.approx(0.7)


def test_summarize_means_over_rows_that_have_the_key():
    """Mean per key over rows with a non-None value, `_n` counting them where some lack it; absent keys left out."""
    rows = [{"a": 1.0, "b": None, "c": 2.0}, {"a": 3.0, "b": 4.0}, {"a": 5.0, "b": None, "d": 9.0}]
    assert summarize(rows, ("a", "b", "c", "e")) == {"a": 3.0, "b": 4.0, "b_n": 1, "c": 2.0, "c_n": 1}


def test_summarize_bootstrap_bounds_bracket_the_mean():
    """With n_bootstrap, each key gets _low <= mean <= _high; the same seed gives the same bounds."""
    rows = [{"x": float(i % 3 == 0), "y": i / 10} for i in range(30)]
    summary = summarize(rows, ("x", "y"), n_bootstrap=300, seed=4)
    assert set(summary) == {"x", "x_low", "x_high", "y", "y_low", "y_high"}
    for key in ("x", "y"):
        assert summary[f"{key}_low"] < summary[key] < summary[f"{key}_high"]
    assert summary["x"] == pytest.approx(10 / 30) and summary["y"] == pytest.approx(1.45)
    assert summarize(rows, ("x", "y"), n_bootstrap=300, seed=4) == summary
    assert set(summarize(rows, ("x",))) == {"x"}  # no bounds without n_bootstrap


def test_paired_bootstrap_covers_a_known_difference():
    """b = a - 0.3 plus small noise: the interval holds 0.3 and excludes 0; identical samples give 0 exactly."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a - 0.3 + rng.normal(scale=0.05, size=200)
    d = paired_bootstrap(a, b, n_resamples=2000, seed=1)
    assert d["low"] < 0.3 < d["high"] and d["low"] > 0 and d["n"] == 200
    # Unpaired intervals of a and b overlap heavily (their spread is 1): pairing is what shows the difference.
    assert bootstrap_ci(a)[1] > bootstrap_ci(b)[0]
    assert paired_bootstrap(a, a) == {"mean": 0.0, "low": 0.0, "high": 0.0, "median": 0.0, "n": 200}


def test_paired_differences_match_edits_by_id():
    rows = [{"model": m, "procedure": "ft", "edit_id": i, "x": v}
            for m, values in (("editable", [1, 1, 1]), ("finetuned", [0, 1, 0])) for i, v in zip((5, 6, 7), values)]
    rows.append({"model": "editable", "procedure": "ft", "edit_id": 8, "x": 1})  # no finetuned row: left out
    out = paired_differences(rows, [("editable", "finetuned")], ("x",), n_bootstrap=100)
    assert out["editable-finetuned"]["ft"]["x"]["n"] == 3
    assert out["editable-finetuned"]["ft"]["x"]["mean"] == pytest.approx(2 / 3)


def test_paired_differences_skip_none_per_key():
    """Per key, only the edits where both models have a value count (`n` says how many), each paired with its own
    edit; a key no edit has, or that only one model ever has, is left out; other keys keep every edit."""
    a = {5: {"x": 1.0, "g": 1.0, "f": 0.5}, 6: {"x": 0.0, "g": None, "f": 3.0}, 7: {"x": 1.0, "g": 0.0, "f": 9.0},
         8: {"x": 1.0, "g": 1.0, "f": 1.0}}
    b = {5: {"x": 0.0, "g": 0.0, "f": 1.5}, 6: {"x": 0.0, "g": 1.0, "f": 1.0}, 7: {"x": 0.0, "g": None, "f": None},
         8: {"x": 1.0, "g": 0.0, "f": 1.0}}
    rows = [{"model": model, "procedure": "ft", "edit_id": i, "absent": None, "lonely": 1.0 if model == "editable" else None,
             **values[i]} for model, values in (("editable", a), ("finetuned", b)) for i in (8, 6, 5, 7)]
    keys = ("x", "g", "f", "absent", "lonely", "nowhere")
    out = paired_differences(rows, [("editable", "finetuned")], keys, n_bootstrap=200)["editable-finetuned"]["ft"]
    assert set(out) == {"x", "g", "f"}
    # By hand: x over edits 5-8, g over 5 and 8 (6: a lacks it, 7: b lacks it), f over 5, 6 and 8 (7: b lacks it).
    assert (out["x"]["n"], out["g"]["n"], out["f"]["n"]) == (4, 2, 3)
    assert out["x"]["mean"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert out["g"]["mean"] == pytest.approx((1 + 1) / 2) and out["g"]["low"] == out["g"]["high"] == 1.0
    # f's differences per edit: 5: -1, 6: +2, 8: 0 (edit 7's 9.0 would pull the mean to 2.75 if it counted)
    assert out["f"]["mean"] == pytest.approx(1 / 3) and out["f"]["median"] == pytest.approx(0.0)
    assert out["f"] == paired_bootstrap([1.0, 3.0, 0.5], [1.0, 1.0, 1.5], 200)  # edits 8, 6, 5 as the rows list them


SUMMARY = {
    "n_edits": 3,
    "base": {"edit_lr": 0.1, "ppl_unedited": 20.0, "fluency_unedited": 5.0,
             "ft": {"edit_success": 0.5, "edit_success_low": 0.2, "edit_success_high": 0.8, "kl": 0.1, "kl_median": 0.05,
                    "fluency_n": 2}},
    "editable": {"edit_lr": 0.03, "ppl_unedited": 21.0, "fluency_unedited": 4.5,
                 "ft": {"edit_success": 0.9, "edit_success_low": 0.7, "edit_success_high": 1.0, "kl": 0.3, "fluency": 4.0},
                 "ft_kl": {"edit_success": 0.8, "kl": 0.01}},
    "differences": {
        "editable-base": {"ft": {"edit_success": {"mean": 0.4, "low": 0.1, "high": 0.7, "median": 0.5, "n": 3},
                                 "kl": {"mean": 0.2, "low": -0.1, "high": 0.5, "median": 0.1, "n": 3}}},
        "editable-finetuned": {"ft": {"edit_success": {"mean": -1.0, "low": -2.0, "high": 0.0, "median": -1.0, "n": 3}}},
    },
}


def test_headline_keeps_means_only():
    """Per model: the `_unedited` figures and, per procedure, the means of the asked keys that it has (no bounds,
    medians, counts, other keys or scalars such as edit_lr); per asked comparison the mean paired difference."""
    out = headline(SUMMARY, ("base", "editable"), ("edit_success", "fluency"), ("editable-base",))
    assert out == {
        "base": {"ppl_unedited": 20.0, "fluency_unedited": 5.0, "ft": {"edit_success": 0.5}},
        "editable": {"ppl_unedited": 21.0, "fluency_unedited": 4.5, "ft": {"edit_success": 0.9, "fluency": 4.0},
                     "ft_kl": {"edit_success": 0.8}},
        "editable-base": {"ft": {"edit_success": 0.4}},
    }
    both = headline(SUMMARY, ("editable",), ("kl",), ("editable-base", "editable-finetuned"))
    assert both == {"editable": {"ppl_unedited": 21.0, "fluency_unedited": 4.5, "ft": {"kl": 0.3}, "ft_kl": {"kl": 0.01}},
                    "editable-base": {"ft": {"kl": 0.2}}, "editable-finetuned": {"ft": {}}}
    numbers = [v for model in out.values() for v in model.values() if not isinstance(v, dict)]
    numbers += [v for model in out.values() for p in model.values() if isinstance(p, dict) for v in p.values()]
    assert all(isinstance(v, float) for v in numbers)  # nothing nested deeper than procedure -> key -> mean
