"""The edit: tokenised edit examples, losses, and the inner loop as a pure function of parameters.

An edit never mutates the model: `apply_edit` maps a dict of parameter tensors to a new
dict, and `forward` runs the model with those tensors swapped in (`torch.func.functional_call`).
Restoring a model after an edit is therefore free: drop the dict.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

IGNORE = -100  # label of tokens that no loss is taken on

Batch = dict[str, Tensor]  # input_ids, attention_mask, labels: each [B, T]
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


def forward(model: nn.Module, batch: Batch, params: Mapping[str, Tensor] | None = None) -> Tensor:
    """Logits [B, T, V] of `model`, with `params` (name -> tensor) in place of its own where given."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if not params:
        return model(**inputs).logits
    return functional_call(model, dict(params), args=(), kwargs=inputs, strict=False)["logits"]


def _upcast(logits: Tensor) -> Tensor:
    """At least float32 for softmax, without cutting float64 down."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def token_logprobs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probability of each next-token label [B, T-1] and the mask of labelled positions."""
    logits, targets = logits[:, :-1], labels[:, 1:]
    mask = targets != IGNORE
    logp = torch.log_softmax(_upcast(logits), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token cross-entropy over labelled tokens."""
    return F.cross_entropy(_upcast(logits[:, :-1].flatten(0, 1)), labels[:, 1:].flatten(), ignore_index=IGNORE)


def kl_divergence(pre_logits: Tensor, post_logits: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean over real tokens of KL(pre || post) between next-token distributions."""
    pre = torch.log_softmax(_upcast(pre_logits), dim=-1)
    post = torch.log_softmax(_upcast(post_logits), dim=-1)
    per_token = (pre.exp() * (pre - post)).sum(-1)  # [B, T]
    mask = attention_mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum()


def edit_step(
    model: nn.Module,
    params: Mapping[str, Tensor],
    batch: Batch,
    lr: float | Mapping[str, Tensor],
    create_graph: bool,
    penalty: Penalty | None = None,
) -> dict[str, Tensor]:
    """One SGD step on the edit loss (plus `penalty(params)` if given): returns new parameters.

    The input dict is untouched. With `create_graph` the step stays differentiable
    (second-order MAML); without it the gradient is a constant and the outer gradient is
    first order.
    """
    loss = lm_loss(forward(model, batch, params), batch["labels"])
    if penalty is not None:
        loss = loss + penalty(params)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    new = {}
    for (name, value), grad in zip(params.items(), grads):
        step_lr = lr[name] if isinstance(lr, Mapping) else lr
        new[name] = value - step_lr * grad
    return new


def apply_edit(
    model: nn.Module,
    params: Mapping[str, Tensor],
    batch: Batch,
    lr: float | Mapping[str, Tensor],
    steps: int,
    create_graph: bool = False,
    penalty: Penalty | None = None,
) -> dict[str, Tensor]:
    """`steps` SGD steps on the edit loss over `params` only (the inner loop)."""
    for _ in range(steps):
        params = edit_step(model, params, batch, lr, create_graph, penalty)
    return params


def kl_penalty(model: nn.Module, batch: Batch, pre_logits: Tensor, weight: float) -> Penalty:
    """`weight * KL(pre || post)` on a locality sample: the FT+KL edit of MEND's baselines."""
    return lambda params: weight * kl_divergence(pre_logits, forward(model, batch, params), batch["attention_mask"])


def detached_edit_params(model: nn.Module, names: list[str]) -> dict[str, Tensor]:
    """Fresh leaf copies of the named weights, to edit without touching the model or its graph."""
    return {name: model.get_parameter(name).detach().requires_grad_(True) for name in names}
