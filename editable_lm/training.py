"""Training: the fine-tuned baseline (LM loss) and the editable model (MAML over edits)."""

from __future__ import annotations

import random
from typing import Iterator

import torch
from torch import Tensor, nn
from tqdm import tqdm

from editable_lm.editing import Batch, apply_edit, collate, encode_edit, encode_text, kl_divergence, lm_loss, target_loss
from editable_lm.checkpoints import Checkpoints, TrainState
from editable_lm.errors import EditLMError
from editable_lm.models import device, edit_parameter_names, top_block_parameter_names
from editable_lm.params import EditableParams, EditParams, TrainParams
from editable_lm.split_forward import SplitForward


def passage_batches(
    passages: list[dict], tokenizer, params: TrainParams, rng: random.Random | None = None, start: int = 0
) -> Iterator[list[dict]]:
    """`params.steps` seeded batches of training passages, identical for both trained models.

    A resumed run passes the restored `rng` and the step to `start` at.
    """
    rng = rng or random.Random(params.seed)
    for _ in range(start, params.steps):
        yield rng.sample(passages, min(params.batch_size, len(passages)))


def encode_passages(passages: list[dict], tokenizer, max_len: int) -> Batch:
    """A batch of passages on the training device, each cut to `max_len` tokens."""
    return collate([encode_text(tokenizer, p["text"], max_len) for p in passages], tokenizer.pad_token_id, device())


def encode_edits(pairs: list[dict], tokenizer, max_len: int) -> Batch:
    """A batch of edits: the prefix and the new name, labels on the new name only."""
    examples = [encode_edit(tokenizer, p["prefix"], p["new_name"], max_len) for p in pairs]
    return collate(examples, tokenizer.pad_token_id, device())


def trainable_parameters(model: nn.Module, params: TrainParams, extra: list[str] = ()) -> list[str]:
    """Freeze everything but the top `outer_blocks` blocks (and `extra` names); return what trains."""
    names = set(top_block_parameter_names(model, params.outer_blocks)) | set(extra)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in names)
    return [name for name, _ in model.named_parameters() if name in names]


def finetune(
    model: nn.Module, tokenizer, passages: list[dict], params: TrainParams, live=None, checkpoints: Checkpoints | None = None
) -> nn.Module:
    """The baseline: Adam on the LM loss of the training passages, nothing else."""
    torch.manual_seed(params.seed)
    model.to(device()).train()
    names = trainable_parameters(model, params)
    optimizer = torch.optim.Adam([model.get_parameter(n) for n in names], lr=params.lr)
    checkpoints = checkpoints or Checkpoints(None, 0, {})
    state = TrainState(model, names, optimizer, {"batches": random.Random(params.seed)})
    start = checkpoints.resume(state, live)
    batches = passage_batches(passages, tokenizer, params, state.rngs["batches"], start)
    for step, batch_passages in enumerate(tqdm(batches, initial=start, total=params.steps, desc="finetune"), start + 1):
        batch = encode_passages(batch_passages, tokenizer, params.seq_len)
        loss = lm_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        checkpoints.step_done(step, state, live, {"train/loss_base": loss.item()})
    return model.eval()


def editable_losses(
    model: SplitForward,
    passages: Batch,
    edits: Batch,
    inner_lr: float | dict[str, Tensor],
    params: EditableParams,
) -> dict[str, Tensor]:
    """The outer losses of one MAML step; `total` is what the outer optimizer minimises.

    base: LM loss of the unedited model on the passages; edit: edit loss after the inner
    loop; locality: KL(pre || post) on the passages, the pre-edit distribution held fixed.
    The blocks below the edit run once per input (`SplitForward.prepare_many`); their graph is
    shared by every pass above them, so the outer gradient still reaches trained lower blocks.
    """
    passages, edits = model.prepare_many([passages, edits])
    start = {name: model.model.get_parameter(name) for name in model.names}
    edited = apply_edit(model, start, edits, inner_lr, params.inner_steps, create_graph=not params.first_order)
    pre_logits, post_logits, edit_logits = model.logits_many(
        [(passages, None, None), (passages, edited, None), (edits, edited, edits.targets.where)]
    )
    base = lm_loss(pre_logits, passages.batch["labels"])
    edit = target_loss(edit_logits, edits.targets)
    locality = kl_divergence(pre_logits.detach(), post_logits, passages.batch["attention_mask"])
    total = params.cbase * base + params.cedit * edit + params.cloc * locality
    return {"total": total, "base": base, "edit": edit, "locality": locality}


def train_editable(
    model: nn.Module,
    tokenizer,
    passages: list[dict],
    pairs: list[dict],
    train: TrainParams,
    editable: EditableParams,
    edit: EditParams,
    live=None,
    checkpoints: Checkpoints | None = None,
) -> tuple[nn.Module, dict[str, Tensor]]:
    """MAML (Editable Neural Networks): each step makes one edit and keeps the rest of the model in place.

    Returns the model and the per-tensor inner learning rates (learned if `learn_lr`, else fixed).
    """
    torch.manual_seed(train.seed)
    model.to(device()).train()
    edit_names = edit_parameter_names(model, edit)
    split = SplitForward(model, edit_names)
    names = trainable_parameters(model, train, extra=edit_names)
    inner_lr = {n: torch.tensor(editable.inner_lr, device=device(), requires_grad=editable.learn_lr) for n in edit_names}
    groups = [{"params": [model.get_parameter(n) for n in names], "lr": train.lr}]
    if editable.learn_lr:
        groups.append({"params": list(inner_lr.values()), "lr": editable.lr_lr})
    optimizer = torch.optim.Adam(groups)
    edit_rng = random.Random(train.seed + 1)  # its own stream, so passage batches match finetune's
    checkpoints = checkpoints or Checkpoints(None, 0, {})
    state = TrainState(model, names, optimizer, {"batches": random.Random(train.seed), "edits": edit_rng}, inner_lr)
    start = checkpoints.resume(state, live)
    batches = passage_batches(passages, tokenizer, train, state.rngs["batches"], start)
    for step, batch_passages in enumerate(tqdm(batches, initial=start, total=train.steps, desc="editable"), start + 1):
        # The passage must be unrelated to the edit: never from the edit's article.
        articles = {p["article_id"] for p in batch_passages}
        unrelated = [p for p in pairs if p["article_id"] not in articles]
        if not unrelated:
            raise EditLMError("editable: every training edit shares an article with the passage batch")
        pair = edit_rng.choice(unrelated)
        losses = editable_losses(
            split,
            encode_passages(batch_passages, tokenizer, train.seq_len),
            encode_edits([pair], tokenizer, train.seq_len),
            inner_lr,
            editable,
        )
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        with torch.no_grad():
            for lr in inner_lr.values():
                lr.clamp_(min=0.0)  # a negative learning rate would undo edits
        checkpoints.step_done(step, state, live, {f"train/loss_{key}": value.item() for key, value in losses.items()})
    return model.eval(), {n: lr.detach() for n, lr in inner_lr.items()}
