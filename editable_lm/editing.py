"""The edit: tokenised edit examples, losses, and the inner loop as a pure function of parameters.

An edit never mutates the model: `apply_edit` maps a dict of parameter tensors to a new
dict, and `SplitForward.logits` runs the model with those tensors swapped in (`torch.func.functional_call`).
Restoring a model after an edit is therefore free: drop the dict.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from editable_lm.split_forward import IGNORE, Batch, Prepared, SplitForward, Targets, upcast

Penalty = Callable[[Mapping[str, Tensor]], Tensor]  # extra edit loss as a function of the edited weights


def encode_edit(tokenizer, prefix: str, name: str, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids of `prefix + " " + name` and labels that are the name's tokens only.

    The prefix is cut from the left so that the name always fits in `max_len` tokens.
    """
    name_ids = tokenizer(" " + name, add_special_tokens=False)["input_ids"]
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    prefix_ids = prefix_ids[-max(1, max_len - len(name_ids)) :]
    return prefix_ids + name_ids, [IGNORE] * len(prefix_ids) + name_ids


def encode_text(tokenizer, text: str, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids of a passage (first `max_len` tokens), every token a label."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_len]
    return ids, list(ids)


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int, device: torch.device | str = "cpu") -> Batch:
    """Right-pad (ids, labels) pairs into a batch."""
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, (ids, labs) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def label_logprobs(logprobs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probability of each next-token label [B, T-1] from log-probabilities [B, T, V];
    the mask of labelled positions."""
    targets = labels[:, 1:]
    mask = targets != IGNORE
    picked = logprobs[:, :-1].gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token cross-entropy over labelled tokens, from logits [B, T, V]."""
    return F.cross_entropy(upcast(logits[:, :-1].flatten(0, 1)), labels[:, 1:].flatten(), ignore_index=IGNORE)


def target_loss(logits: Tensor, targets: Targets, per_edit: bool = False) -> Tensor:
    """Mean cross-entropy from logits [N, V] at the labelled positions (`SplitForward.target_logits`).

    With `per_edit`, the sum over the batch's edits of each edit's mean: a batch of edits then
    pulls on each edit as hard as that edit alone would, however many edits share the batch.
    """
    if not per_edit:
        return F.cross_entropy(upcast(logits), targets.tokens)
    losses = F.cross_entropy(upcast(logits), targets.tokens, reduction="none")
    sums = losses.new_zeros(targets.n_rows).index_add(0, targets.rows, losses)
    counts = losses.new_zeros(targets.n_rows).index_add(0, targets.rows, torch.ones_like(losses))
    return (sums / counts.clamp(min=1)).sum()


def kl_divergence(pre_logits: Tensor, post_logits: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean over real tokens of KL(pre || post) between next-token distributions."""
    pre = torch.log_softmax(upcast(pre_logits), dim=-1)
    post = torch.log_softmax(upcast(post_logits), dim=-1)
    per_token = (pre.exp() * (pre - post)).sum(-1)  # [B, T]
    mask = attention_mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum()


def edit_step(
    model: SplitForward,
    params: Mapping[str, Tensor],
    edit: Prepared,
    lr: float | Mapping[str, Tensor],
    create_graph: bool,
    penalty: Penalty | None = None,
    per_edit: bool = False,
) -> dict[str, Tensor]:
    """One SGD step on the edit loss (plus `penalty(params)` if given): returns new parameters.

    The input dict is untouched. With `create_graph` the step stays differentiable
    (second-order MAML); without it the gradient is a constant and the outer gradient is
    first order.
    """
    loss = target_loss(model.target_logits(edit, params), edit.targets, per_edit)
    if penalty is not None:
        loss = loss + penalty(params)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    new = {}
    for (name, value), grad in zip(params.items(), grads):
        step_lr = lr[name] if isinstance(lr, Mapping) else lr
        new[name] = value - step_lr * grad
    return new


def apply_edit(
    model: SplitForward,
    params: Mapping[str, Tensor],
    edit: Prepared,
    lr: float | Mapping[str, Tensor],
    steps: int,
    create_graph: bool = False,
    penalty: Penalty | None = None,
    per_edit: bool = False,
) -> dict[str, Tensor]:
    """`steps` SGD steps on the edit loss over `params` only (the inner loop); `per_edit`: see `target_loss`."""
    for _ in range(steps):
        params = edit_step(model, params, edit, lr, create_graph, penalty, per_edit)
    return params


def detached_edit_params(model: SplitForward) -> dict[str, Tensor]:
    """Fresh leaf copies of the edit weights, to edit without touching the model or its graph."""
    return {name: model.model.get_parameter(name).detach().requires_grad_(True) for name in model.names}
