"""Evaluation metrics, on hand-made logits and on a tiny random Llama."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_llama
from editable_lm.editing import IGNORE, collate, encode_edit, forward
from editable_lm.metrics import (
    MODEL_METRICS, edit_success, evaluate_model, perplexity, relative_drawdown, sequence_logprob, summarize,
)
from editable_lm.models import edit_parameter_names
from editable_lm.params import EditParams

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
    assert edit_success(logits, labels).tolist() == [True, False, True]


def test_uniform_logits():
    """Uniform logits: log-prob is n_labelled*log(1/V) per row, perplexity is V."""
    logits = torch.zeros(2, 5, V)
    labels = torch.tensor([[1, 2, 3, 4, 5], [IGNORE, IGNORE, IGNORE, 2, IGNORE]])
    torch.testing.assert_close(sequence_logprob(logits, labels), torch.tensor([4, 1]) * math.log(1 / V))
    assert perplexity(logits, labels) == pytest.approx(V)


def test_perplexity_of_certain_model_is_one():
    """A model that puts all mass on the labels has perplexity 1 and log-prob 0."""
    labels = torch.tensor([[1, 2, 3, 4]])
    logits = one_hot_logits([[2, 3, 4, 0]]) * 100
    assert perplexity(logits, labels) == pytest.approx(1.0)
    assert sequence_logprob(logits, labels).item() == pytest.approx(0.0, abs=1e-6)


def test_relative_drawdown():
    """0 when perplexity is unchanged, 0.1 when it rose by 10%."""
    assert relative_drawdown(10, 10) == 0
    assert relative_drawdown(10, 11) == pytest.approx(0.1)
    assert relative_drawdown(10, 9) == pytest.approx(-0.1)


def test_summarize_averages_every_metric():
    """summarize is the mean of each model metric over rows; other keys are ignored."""
    rows = [{**{k: float(i) for k, i in zip(MODEL_METRICS, range(8))}, "model": "a"},
            {**{k: float(i) * 3 for k, i in zip(MODEL_METRICS, range(8))}, "model": "a"}]
    assert summarize(rows) == {k: 2.0 * i for k, i in zip(MODEL_METRICS, range(8))}


PAIRS = [
    {"id": 0, "prefix": "The theory of relativity was developed by", "name": "Albert Einstein", "new_name": "Marie Curie"},
    {"id": 1, "prefix": "Radioactivity was studied in Paris by", "name": "Marie Curie", "new_name": "Niels Bohr"},
]
PASSAGES = [
    {"text": "Isaac Newton wrote the Principia, a book about motion and gravity."},
    {"text": "Copenhagen is the capital of Denmark."},
]


@pytest.fixture
def model_and_names(tokenizer):
    """A tiny random Llama over SmolLM2's vocabulary and its top-block MLP weights."""
    model = tiny_llama(vocab=len(tokenizer))
    return model, edit_parameter_names(model, EditParams(blocks=1))


def test_evaluate_with_zero_lr_changes_nothing(tokenizer, model_and_names):
    """With lr 0 the edited model is the model: no drawdown, same log-probs and success."""
    model, names = model_and_names
    rows = evaluate_model(model, tokenizer, PAIRS, PASSAGES, names, lr=0.0, steps=1, max_len=32, label="m")
    assert [r["edit_id"] for r in rows] == [0, 1] and {r["model"] for r in rows} == {"m"}
    for row, pair in zip(rows, PAIRS):
        assert set(MODEL_METRICS) <= set(row)
        assert all(math.isfinite(row[k]) for k in MODEL_METRICS)
        assert row["ppl_drawdown"] == pytest.approx(0.0, abs=1e-6)
        assert row["ppl_post"] == pytest.approx(row["ppl_pre"], rel=1e-6)
        assert row["logp_new_post"] == pytest.approx(row["logp_new_pre"], abs=1e-5)
        new = collate([encode_edit(tokenizer, pair["prefix"], pair["new_name"], 32)], tokenizer.pad_token_id)
        with torch.no_grad():
            assert row["edit_success"] == float(edit_success(forward(model, new), new["labels"]).item())


def test_evaluate_large_lr_raises_new_name_logprob(tokenizer, model_and_names):
    """A real edit makes the new name more likely, and does not touch the model's weights."""
    model, names = model_and_names
    before = {n: p.clone() for n, p in model.state_dict().items()}
    rows = evaluate_model(model, tokenizer, PAIRS, PASSAGES, names, lr=1.0, steps=3, max_len=32)
    for row in rows:
        assert row["logp_new_post"] > row["logp_new_pre"] + 0.05
        assert row["sec_per_edit"] > 0
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())
