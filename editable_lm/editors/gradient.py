"""The gradient editors: `ft` (fixed steps on the edit loss), `ft_kl` (the same with a KL penalty on a locality
sample) and `until_success` (steps until the edit holds, ENN's protocol). Each edits at the model's learning rate
chosen by `tune` (scaled per tensor by the inner rates MAML learned for an editable model), on the weights the
split model was built for (`edit.blocks`, `edit.module`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch
from torch import Tensor

from editable_lm.editing import apply_edit, detached_edit_params
from editable_lm.locality import Reference, predict
from editable_lm.metrics import edit_success
from editable_lm.split_forward import Prepared, SplitForward

NAMES = ("ft", "ft_kl", "until_success")  # the editors built here: each model's, at its tuned lr (stage evaluate)


@dataclass(frozen=True)
class FineTune:
    """An edit by gradient steps on the edit loss at `lr` (per edited tensor): `steps` of them (ft), with a KL
    penalty on a locality sample (ft_kl), or, with `until_success`, steps until the edit holds, at most `steps`
    (ENN's protocol)."""

    batched: ClassVar[bool] = False  # one edit at a time in `evaluate_edits` (batches: `batched_grid`)
    name: str
    lr: float | Mapping[str, Tensor]
    steps: int
    kl_weight: float = 0.0
    locality: Reference | None = None
    until_success: bool = False
    per_edit: bool = False  # a batch's loss: the sum of each edit's mean (`target_loss`), not one mean over all tokens

    def weight_names(self, model) -> list[str] | None:
        """None: the weights the split model was built for (`edit.blocks`, `edit.module`)."""
        return None

    def edit(self, model: SplitForward, tokenizer, edit: Prepared, pairs: list[dict], max_len: int):
        """Edited weights and the gradient steps taken."""
        return edit_with_steps(model, edit, self)


def edit_model(
    model: SplitForward, edit: Prepared, procedure: FineTune, start: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Edited weights (detached) after `procedure` on the prepared edit, from the model's or from `start`."""
    return edit_with_steps(model, edit, procedure, start)[0]


def edit_with_steps(
    model: SplitForward, edit: Prepared, procedure: FineTune, start: Mapping[str, Tensor] | None = None
) -> tuple[dict[str, Tensor], int]:
    """`edit_model`, and the number of gradient steps it took."""
    params = detached_edit_params(model)
    if start is not None:
        params = {name: value.detach().requires_grad_(True) for name, value in start.items()}
    penalty = None
    if procedure.kl_weight:
        loc = procedure.locality
        penalty = lambda params: procedure.kl_weight * loc.mean_kl(predict(model, loc.inputs, params))  # noqa: E731
    if not procedure.until_success:
        with torch.enable_grad():
            edited = apply_edit(model, params, edit, procedure.lr, procedure.steps, penalty=penalty, per_edit=procedure.per_edit)
        return {name: value.detach() for name, value in edited.items()}, procedure.steps
    for step in range(procedure.steps + 1):
        with torch.no_grad():
            holds = bool(edit_success(model.target_logits(edit, params), edit.targets).all())
        if holds or step == procedure.steps:
            return {name: value.detach() for name, value in params.items()}, step
        with torch.enable_grad():
            params = apply_edit(model, params, edit, procedure.lr, 1, penalty=penalty, per_edit=procedure.per_edit)
        params = {name: value.detach().requires_grad_(True) for name, value in params.items()}
    raise AssertionError("unreachable")


def strength_grid(lrs, steps, lr_for, per_edit: bool = False) -> list[FineTune]:
    """Plain FT edits at every (lr, steps), named `lr=<lr>,steps=<steps>`; `lr_for(lr)` gives per-tensor rates."""
    return [FineTune(f"lr={lr:g},steps={n}", lr_for(lr), n, per_edit=per_edit) for lr in lrs for n in steps]


def setting_of(name: str) -> dict[str, float]:
    """`lr=<lr>,steps=<steps>` (a `strength_grid` name) as {"lr": ..., "steps": ...}."""
    fields = dict(part.split("=") for part in name.split(","))
    return {"lr": float(fields["lr"]), "steps": int(fields["steps"])}
