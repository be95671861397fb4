"""Training: the fine-tuned baseline (LM loss) and the editable model (MAML over edits)."""

from __future__ import annotations

import math
import random
from typing import Iterator

import torch
from torch import Tensor, nn
from tqdm import tqdm

from editable_lm import distributed
from editable_lm.editing import IGNORE, Batch, apply_edit, collate, encode_edit, encode_text, kl_divergence, lm_loss, target_loss
from editable_lm.checkpoints import Checkpoints, TrainState
from editable_lm.errors import EditLMError
from editable_lm.models import device, edit_parameter_names, top_block_parameter_names
from editable_lm.params import EditableParams, EditParams, TrainParams
from editable_lm.split_forward import SplitForward


def passage_batches(
    passages: list[dict], tokenizer, params: TrainParams, rng: random.Random | None = None, start: int = 0
) -> Iterator[list[dict]]:
    """`params.steps` seeded batches of training passages, identical for both trained models (and on every rank,
    which takes its share with `distributed.my_share`).

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


def unrelated_edit(pairs: list[dict], passages: list[dict], rng: random.Random) -> dict:
    """A training edit drawn from none of the passages' articles: the passages must be unrelated to the edit."""
    articles = {p["article_id"] for p in passages}
    unrelated = [p for p in pairs if p["article_id"] not in articles]
    if not unrelated:
        raise EditLMError("every training edit shares an article with the passage batch")
    return rng.choice(unrelated)


def encode_own_names(pairs: list[dict], tokenizer, max_len: int) -> Batch:
    """A batch of the pairs' sentences as they are: the prefix and the person's own name, labels on the name."""
    examples = [encode_edit(tokenizer, p["prefix"], p["name"], max_len) for p in pairs]
    return collate(examples, tokenizer.pad_token_id, device())


def labelled_tokens(batch: Batch) -> Tensor:
    """How many tokens `lm_loss` averages over."""
    return (batch["labels"][:, 1:] != IGNORE).sum()


def real_tokens(batch: Batch) -> Tensor:
    """How many tokens `kl_divergence` averages over."""
    return batch["attention_mask"].sum()


def lr_factor(step: int, train: TrainParams) -> float:
    """The learning-rate multiplier at `step` (from 1): a linear warm-up over `train.warmup_steps`, then constant
    (`train.decay: none`) or a cosine from 1 towards 0 at the last step."""
    if step <= train.warmup_steps:
        return step / train.warmup_steps
    if train.decay == "none":
        return 1.0
    progress = (step - train.warmup_steps - 1) / (train.steps - train.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], step: int, train: TrainParams) -> None:
    """Set every group's rate to its base rate x `lr_factor` (from the step alone: a resumed run gets the same)."""
    if train.warmup_steps == 0 and train.decay == "none":
        return  # the constant rate, untouched
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * lr_factor(step, train)


def outer_step(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    """Backward, the gradients summed over the ranks (each rank's loss is its part of the global one), a step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.sum_gradients([p for group in optimizer.param_groups for p in group["params"]])
    optimizer.step()


def trainable_parameters(model: nn.Module, params: TrainParams, extra: list[str] = ()) -> list[str]:
    """Freeze everything but the top `outer_blocks` blocks (and `extra` names); return what trains."""
    names = set(top_block_parameter_names(model, params.outer_blocks)) | set(extra)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in names)
    return [name for name, _ in model.named_parameters() if name in names]


def finetune(
    model: nn.Module, tokenizer, passages: list[dict], params: TrainParams, live=None, checkpoints: Checkpoints | None = None
) -> nn.Module:
    """The baseline: Adam on the LM loss of the training passages, nothing else (under torchrun, each rank takes
    its share of every batch)."""
    torch.manual_seed(params.seed)
    model.to(device()).train()
    names = trainable_parameters(model, params)
    optimizer = torch.optim.Adam([model.get_parameter(n) for n in names], lr=params.lr)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    checkpoints = checkpoints or Checkpoints(None, 0, {})
    state = TrainState(model, names, optimizer, {"batches": random.Random(params.seed)})
    start = checkpoints.resume(state, live)
    batches = passage_batches(passages, tokenizer, params, state.rngs["batches"], start)
    for step, batch_passages in enumerate(tqdm(batches, initial=start, total=params.steps, desc="finetune"), start + 1):
        batch = encode_passages(distributed.my_share(batch_passages, "train.batch_size passages"), tokenizer, params.seq_len)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = distributed.mean_share(lm_loss(logits, batch["labels"]), labelled_tokens(batch))
        schedule_lr(optimizer, base_lrs, step, params)
        outer_step(optimizer, loss)
        checkpoints.step_done(step, state, live, {"train/loss_base": distributed.total(loss).item()})
    return model.eval()


def editable_losses(
    model: SplitForward,
    passages: Batch,
    edits: Batch,
    inner_lr: float | dict[str, Tensor],
    params: EditableParams,
    reference_logits: Tensor | None = None,
    probes: Batch | None = None,
    neighbours: Batch | None = None,
) -> dict[str, Tensor]:
    """The outer losses of one MAML step; `total` is what the outer optimizer minimises.

    base: LM loss of the unedited model on the passages; edit: edit loss after the inner
    loop; locality: KL(reference || post) on the passages, the reference being the pre-edit distribution held
    fixed, or `reference_logits` (another model's, `editable.loc_reference`). With `probes` (the edit's person in
    another sentence, labels on the new name), generality: their loss after the edit (weight `cgen`); with
    `neighbours` (other people's sentences, labels on their own names), neighbourhood: KL(pre || post) at those
    names' positions (weight `cneigh`).
    The blocks below the edit run once per input (`SplitForward.prepare_many`); their graph is
    shared by every pass above them, so the outer gradient still reaches trained lower blocks.
    Under torchrun each rank has its share of the passages and the same edit: every loss is this rank's
    part of the global one (`distributed.mean_share`), and the ranks' parts sum to it.
    """
    extra = [batch for batch in (probes, neighbours) if batch is not None]
    passages, edits, *extra = model.prepare_many([passages, edits, *extra])
    probes = extra.pop(0) if probes is not None else None
    neighbours = extra.pop(0) if neighbours is not None else None
    start = {name: model.model.get_parameter(name) for name in model.names}
    edited = apply_edit(model, start, edits, inner_lr, params.inner_steps, create_graph=not params.first_order)
    requests = [(passages, None, None), (passages, edited, None), (edits, edited, edits.targets.where)]
    if probes is not None:
        requests.append((probes, edited, probes.targets.where))
    if neighbours is not None:
        requests += [(neighbours, None, neighbours.targets.where), (neighbours, edited, neighbours.targets.where)]
    pre_logits, post_logits, edit_logits, *extra_logits = model.logits_many(requests)
    reference = pre_logits if reference_logits is None else reference_logits
    base = distributed.mean_share(lm_loss(pre_logits, passages.batch["labels"]), labelled_tokens(passages.batch))
    edit = distributed.replicated_share(target_loss(edit_logits, edits.targets))
    locality = distributed.mean_share(kl_divergence(reference.detach(), post_logits, passages.batch["attention_mask"]),
                                      real_tokens(passages.batch))
    losses = {"base": base, "edit": edit, "locality": locality}
    total = params.cbase * base + params.cedit * edit + params.cloc * locality
    if probes is not None:
        losses["generality"] = distributed.replicated_share(target_loss(extra_logits.pop(0), probes.targets))
        total = total + params.cgen * losses["generality"]
    if neighbours is not None:
        pre, post = extra_logits
        positions = torch.ones(1, len(pre), dtype=torch.long, device=pre.device)
        losses["neighbourhood"] = distributed.replicated_share(kl_divergence(pre.detach()[None], post[None], positions))
        total = total + params.cneigh * losses["neighbourhood"]
    return {"total": total, **losses}


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
    reference_model: nn.Module | None = None,
) -> tuple[nn.Module, dict[str, Tensor]]:
    """MAML (Editable Neural Networks): each step makes one edit and keeps the rest of the model in place.

    `reference_model` (frozen; `editable.loc_reference`), if given, supplies the locality term's reference
    predictions instead of the model's own pre-edit ones. Returns the model and the per-tensor inner learning
    rates (learned if `learn_lr`, else fixed).
    """
    torch.manual_seed(train.seed)
    model.to(device()).train()
    edit_names = edit_parameter_names(model, edit)
    split = SplitForward(model, edit_names)
    names = trainable_parameters(model, train, extra=edit_names)
    dtype = next(model.parameters()).dtype  # the model's: float32 in the pipeline, float64 in the tests
    inner_lr = {n: torch.tensor(editable.inner_lr, device=device(), dtype=dtype, requires_grad=editable.learn_lr)
                for n in edit_names}
    groups = [{"params": [model.get_parameter(n) for n in names], "lr": train.lr}]
    if editable.learn_lr:
        groups.append({"params": list(inner_lr.values()), "lr": editable.lr_lr})
    optimizer = torch.optim.Adam(groups)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    edit_rng = random.Random(train.seed + 1)  # its own stream, so passage batches match finetune's
    # The probes and neighbours have their own streams too: turning their terms on leaves the edits alone.
    rngs = {"batches": random.Random(train.seed), "edits": edit_rng, "probes": random.Random(train.seed + 2),
            "neighbours": random.Random(train.seed + 3)}
    checkpoints = checkpoints or Checkpoints(None, 0, {})
    state = TrainState(model, names, optimizer, rngs, inner_lr)
    start = checkpoints.resume(state, live)
    if reference_model is not None:
        reference_model.to(device()).eval().requires_grad_(False)
    batches = passage_batches(passages, tokenizer, train, state.rngs["batches"], start)
    for step, batch_passages in enumerate(tqdm(batches, initial=start, total=train.steps, desc="editable"), start + 1):
        pair = unrelated_edit(pairs, batch_passages, state.rngs["edits"])
        mine = encode_passages(distributed.my_share(batch_passages, "train.batch_size passages"), tokenizer, train.seq_len)
        reference_logits = None
        if reference_model is not None:
            with torch.no_grad():
                reference_logits = reference_model(input_ids=mine["input_ids"], attention_mask=mine["attention_mask"]).logits
        probes = neighbours = None
        if editable.cgen > 0 and pair.get("probes"):
            probes = encode_edits([state.rngs["probes"].choice(pair["probes"])], tokenizer, train.seq_len)
        if editable.cneigh > 0:
            neighbour = unrelated_edit(pairs, [*batch_passages, pair], state.rngs["neighbours"])
            neighbours = encode_own_names([neighbour], tokenizer, train.seq_len)
        losses = editable_losses(split, mine, encode_edits([pair], tokenizer, train.seq_len), inner_lr, editable,
                                 reference_logits, probes, neighbours)
        schedule_lr(optimizer, base_lrs, step, train)
        outer_step(optimizer, losses["total"])
        with torch.no_grad():
            for lr in inner_lr.values():
                lr.clamp_(min=0.0)  # a negative learning rate would undo edits
        checkpoints.step_done(step, state, live, {f"train/loss_{key}": distributed.total(value).item()
                                                  for key, value in losses.items()})
    return model.eval(), {n: lr.detach() for n, lr in inner_lr.items()}
