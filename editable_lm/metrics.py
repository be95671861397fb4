"""Evaluation: apply the same edit to a model on held-out edits and measure what changed."""

from __future__ import annotations

import math
import time
from typing import Mapping

import torch
from torch import Tensor, nn
from tqdm import tqdm

from editable_lm.editing import IGNORE, Batch, apply_edit, collate, detached_edit_params, encode_edit, forward, token_logprobs
from editable_lm.models import device
from editable_lm.training import encode_passages

MODEL_METRICS = (
    "edit_success", "counterfactual_success", "logp_new_pre", "logp_new_post",
    "ppl_pre", "ppl_post", "ppl_drawdown", "sec_per_edit",
)


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


@torch.no_grad()
def _score(model: nn.Module, batch: Batch, params: Mapping[str, Tensor] | None = None) -> Tensor:
    return forward(model, batch, params)


def evaluate_model(
    model: nn.Module,
    tokenizer,
    pairs: list[dict],
    passages: list[dict],
    edit_names: list[str],
    lr: float | Mapping[str, Tensor],
    steps: int,
    max_len: int,
    label: str = "",
) -> list[dict]:
    """One row per edit: edit the model (from its unedited weights each time) and measure it.

    The model itself is never changed, so nothing needs restoring between edits.
    """
    model.to(device()).eval().requires_grad_(False)
    text = encode_passages(passages, tokenizer, max_len)
    ppl_pre = perplexity(_score(model, text), text["labels"])
    rows = []
    for pair in tqdm(pairs, desc=f"evaluate {label}".strip(), unit="edit"):
        new = collate([encode_edit(tokenizer, pair["prefix"], pair["new_name"], max_len)], tokenizer.pad_token_id, device())
        old = collate([encode_edit(tokenizer, pair["prefix"], pair["name"], max_len)], tokenizer.pad_token_id, device())
        logp_new_pre = sequence_logprob(_score(model, new), new["labels"]).item()
        start = time.perf_counter()
        with torch.enable_grad():
            edited = apply_edit(model, detached_edit_params(model, edit_names), new, lr, steps)
        edited = {name: value.detach() for name, value in edited.items()}
        seconds = time.perf_counter() - start
        new_logits = _score(model, new, edited)
        logp_new_post = sequence_logprob(new_logits, new["labels"]).item()
        logp_old_post = sequence_logprob(_score(model, old, edited), old["labels"]).item()
        ppl_post = perplexity(_score(model, text, edited), text["labels"])
        rows.append({
            "model": label,
            "edit_id": pair["id"],
            "edit_success": float(edit_success(new_logits, new["labels"]).item()),
            "counterfactual_success": float(logp_new_post > logp_old_post),
            "logp_new_pre": logp_new_pre,
            "logp_new_post": logp_new_post,
            "ppl_pre": ppl_pre,
            "ppl_post": ppl_post,
            "ppl_drawdown": relative_drawdown(ppl_pre, ppl_post),
            "sec_per_edit": seconds,
        })
    return rows


def summarize(rows: list[dict]) -> dict[str, float]:
    """Mean of every metric over the edits of one model."""
    return {key: sum(row[key] for row in rows) / len(rows) for key in MODEL_METRICS}
