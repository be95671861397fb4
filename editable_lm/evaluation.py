"""Edit a model on held-out edits and measure reliability, generality, locality and leakage.

Every function edits through `apply_edit`, which returns new weights and leaves the model
alone: "restoring" a model between edits is dropping the dict.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn
from tqdm import tqdm

from editable_lm.editing import Batch, apply_edit, collate, detached_edit_params, encode_edit, forward, kl_divergence, kl_penalty
from editable_lm.metrics import edit_success, perplexity, relative_drawdown, sequence_logprob, top1_agreement
from editable_lm.models import device
from editable_lm.training import encode_edits, encode_passages

MODELS = ("base", "finetuned", "editable")  # the three models every evaluation stage compares

# Per-edit metrics of `measure_edit`; rates and means are summarised with bootstrap intervals.
EDIT_METRICS = (
    "edit_success", "counterfactual_success", "generality", "leakage", "logp_new_pre", "logp_new_post",
    "ppl_drawdown", "kl", "top1_agreement", "sec_per_edit",
)


@dataclass(frozen=True)
class Reference:
    """Passages and the unedited model's logits on them: what an edit should leave alone."""

    batch: Batch
    logits: Tensor
    ppl: float


@dataclass(frozen=True)
class Procedure:
    """How an edit is made: plain gradient steps (ft) or with a KL penalty on a locality sample (ft_kl)."""

    name: str
    lr: float | Mapping[str, Tensor]
    steps: int
    kl_weight: float = 0.0
    locality: Reference | None = None


@torch.no_grad()
def score(model: nn.Module, batch: Batch, params: Mapping[str, Tensor] | None = None) -> Tensor:
    """Logits without a graph, with edited weights if given."""
    return forward(model, batch, params)


def reference(model: nn.Module, tokenizer, passages: list[dict], max_len: int) -> Reference:
    """Encode passages and record the unedited model's predictions on them."""
    batch = encode_passages(passages, tokenizer, max_len)
    logits = score(model, batch)
    return Reference(batch, logits, perplexity(logits, batch["labels"]))


def locality(model: nn.Module, ref: Reference, params: Mapping[str, Tensor]) -> dict[str, float]:
    """What an edit did to unrelated passages: perplexity drawdown, KL(pre || post), top-1 agreement."""
    logits = score(model, ref.batch, params)
    mask = ref.batch["attention_mask"]
    return {
        "ppl_drawdown": relative_drawdown(ref.ppl, perplexity(logits, ref.batch["labels"])),
        "kl": kl_divergence(ref.logits, logits, mask).item(),
        "top1_agreement": top1_agreement(ref.logits, logits, mask),
    }


def edit_model(
    model: nn.Module,
    names: list[str],
    batch: Batch,
    procedure: Procedure,
    start: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Edited weights (detached) after `procedure` on `batch`, from the model's or from `start`."""
    params = detached_edit_params(model, names)
    if start is not None:
        params = {name: value.detach().requires_grad_(True) for name, value in start.items()}
    penalty = None
    if procedure.kl_weight:
        loc = procedure.locality
        penalty = kl_penalty(model, loc.batch, loc.logits, procedure.kl_weight)
    with torch.enable_grad():
        edited = apply_edit(model, params, batch, procedure.lr, procedure.steps, penalty=penalty)
    return {name: value.detach() for name, value in edited.items()}


def new_name_wins(
    model: nn.Module, tokenizer, probes: list[tuple[str, str, str]], max_len: int, params: Mapping[str, Tensor] | None = None
) -> Tensor:
    """For (prefix, new name, old name) probes [N]: is the new name more likely than the old one?"""
    if not probes:
        return torch.zeros(0, dtype=torch.bool)
    examples = [encode_edit(tokenizer, prefix, new, max_len) for prefix, new, _ in probes]
    examples += [encode_edit(tokenizer, prefix, old, max_len) for prefix, _, old in probes]
    batch = collate(examples, tokenizer.pad_token_id, device())
    logp = sequence_logprob(score(model, batch, params), batch["labels"])
    return (logp[: len(probes)] > logp[len(probes) :]).cpu()


def measure_edit(
    model: nn.Module,
    tokenizer,
    pair: dict,
    leak_pairs: list[dict],
    names: list[str],
    procedure: Procedure,
    ref: Reference,
    max_len: int,
) -> dict:
    """Make one edit from the unedited weights and measure everything about it."""
    new = encode_edits([pair], tokenizer, max_len)
    logp_new_pre = sequence_logprob(score(model, new), new["labels"]).item()
    # Leakage: sentences about other people, where the edit's new name should not start to win.
    leak_probes = [(p["prefix"], pair["new_name"], p["name"]) for p in leak_pairs]
    leak_pre = new_name_wins(model, tokenizer, leak_probes, max_len)
    start = time.perf_counter()
    edited = edit_model(model, names, new, procedure)
    seconds = time.perf_counter() - start
    new_logits = score(model, new, edited)
    counterfactual = new_name_wins(model, tokenizer, [(pair["prefix"], pair["new_name"], pair["name"])], max_len, edited)
    probes = [(p["prefix"], p["new_name"], p["name"]) for p in pair.get("probes", [])]
    general = new_name_wins(model, tokenizer, probes, max_len, edited)
    leak_post = new_name_wins(model, tokenizer, leak_probes, max_len, edited)
    return {
        "edit_id": pair["id"],
        "edit_success": float(edit_success(new_logits, new["labels"]).item()),
        "counterfactual_success": float(counterfactual.item()),
        "generality": general.float().mean().item() if probes else None,
        "leakage": (leak_post & ~leak_pre).float().mean().item() if leak_probes else None,
        "logp_new_pre": logp_new_pre,
        "logp_new_post": sequence_logprob(new_logits, new["labels"]).item(),
        **locality(model, ref, edited),
        "sec_per_edit": seconds,
    }


def evaluate_edits(
    model: nn.Module,
    tokenizer,
    pairs: list[dict],
    names: list[str],
    procedure: Procedure,
    ref: Reference,
    max_len: int,
    n_leak_probes: int = 0,
    seed: int = 0,
    label: str = "",
) -> list[dict]:
    """`measure_edit` for each pair, each from the unedited weights.

    Leakage probes for an edit are `n_leak_probes` other pairs from other articles (seeded).
    """
    model.to(device()).eval().requires_grad_(False)
    rng = random.Random(seed)
    rows = []
    for pair in tqdm(pairs, desc=f"{label} {procedure.name}".strip(), unit="edit"):
        others = [p for p in pairs if p["article_id"] != pair["article_id"]]
        leak_pairs = rng.sample(others, min(n_leak_probes, len(others)))
        rows.append(measure_edit(model, tokenizer, pair, leak_pairs, names, procedure, ref, max_len))
    return rows


def log_schedule(n: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to and including n."""
    points = [m * 10**e for e in range(len(str(n)) + 1) for m in (1, 2, 5) if m * 10**e < n]
    return points + [n]


def sequential_edits(
    model: nn.Module, tokenizer, pairs: list[dict], names: list[str], procedure: Procedure, ref: Reference, max_len: int, label: str = ""
) -> list[dict]:
    """Edits one after another without resetting; on a log schedule, retention and locality.

    Retention is the fraction of all edits so far that still succeed.
    """
    model.to(device()).eval().requires_grad_(False)
    checkpoints = set(log_schedule(len(pairs)))
    params, rows = None, []
    for count, pair in enumerate(tqdm(pairs, desc=f"{label} sequential".strip(), unit="edit"), start=1):
        params = edit_model(model, names, encode_edits([pair], tokenizer, max_len), procedure, start=params)
        if count in checkpoints:
            done = encode_edits(pairs[:count], tokenizer, max_len)
            retention = edit_success(score(model, done, params), done["labels"]).float().mean().item()
            rows.append({"n_edits": count, "retention": retention, **locality(model, ref, params)})
    return rows


def batched_edits(
    model: nn.Module, tokenizer, pairs: list[dict], names: list[str], procedure: Procedure, ref: Reference, max_len: int, batch_size: int
) -> list[dict]:
    """Edits made `batch_size` at a time, one gradient step sequence on their joint loss, from the unedited weights."""
    model.to(device()).eval().requires_grad_(False)
    rows = []
    for start in range(0, len(pairs), batch_size):
        batch = encode_edits(pairs[start : start + batch_size], tokenizer, max_len)
        params = edit_model(model, names, batch, procedure)
        success = edit_success(score(model, batch, params), batch["labels"]).float().mean().item()
        rows.append({"batch": start // batch_size, "edit_success": success, **locality(model, ref, params)})
    return rows


def held_out(rows: list[dict], n: int, seed: int) -> list[dict]:
    """The first `n` rows of a seeded shuffle: a smaller n takes a prefix of a larger one's sample."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[:n]


def procedures(model: nn.Module, tokenizer, loc_passages: list[dict], lr, steps: int, kl_weight: float, max_len: int) -> list[Procedure]:
    """The edit procedures compared: plain fine-tuning steps, and the same with a KL penalty."""
    return [
        Procedure("ft", lr, steps),
        Procedure("ft_kl", lr, steps, kl_weight, reference(model, tokenizer, loc_passages, max_len)),
    ]
