"""Edit a model on held-out edits and measure reliability, generality, locality and leakage.

Every function edits through `apply_edit`, which returns new weights and leaves the model
alone: "restoring" a model between edits is dropping the dict.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator, Mapping

import torch
from torch import Tensor
from tqdm import tqdm

from editable_lm.editing import apply_edit, collate, detached_edit_params, encode_edit, label_logprobs
from editable_lm.fluency import generate, mean_ngram_entropy
from editable_lm.metrics import edit_success, perplexity, relative_drawdown, sequence_logprob
from editable_lm.models import device, edit_learning_rates, load_for_editing
from editable_lm.params import EditParams
from editable_lm.split_forward import Prepared, SharedLower, SplitForward, upcast
from editable_lm.training import encode_edits, encode_passages

MODELS = ("base", "finetuned", "editable")  # the three models every evaluation stage compares

# Per-edit metrics of `measure_edit`; rates and means are summarised with bootstrap intervals.
# CounterFact's names: efficacy = counterfactual_success, paraphrase = generality, neighbourhood = 1 - leakage.
EDIT_METRICS = (
    "edit_success", "counterfactual_success", "generality", "leakage", "neighbourhood", "logp_new_pre",
    "logp_new_post", "ppl_drawdown", "ppl_post", "kl", "top1_agreement", "fluency", "edit_steps",
    "steps_to_success", "sec_per_edit",
)
# What a model wins or loses by on the same edits: every one gets a paired difference.
COMPARED_METRICS = (
    "edit_success", "counterfactual_success", "generality", "leakage", "neighbourhood", "ppl_drawdown", "ppl_post",
    "kl", "top1_agreement", "fluency",
)


@dataclass(frozen=True)
class Reference:
    """Passages and the unedited model's predictions on them: what an edit should leave alone.

    `inputs` holds the passages' lower-block activations, computed once per model.
    """

    inputs: Prepared
    logprobs: Tensor  # [B, T, V] next-token log-probabilities of the unedited model
    probs: Tensor  # [B, T, V] the same, exponentiated once
    top1: Tensor  # [B, T] its most likely next tokens
    ppl: float

    @classmethod
    def of(cls, inputs: Prepared, logprobs: Tensor) -> Reference:
        return cls(inputs, logprobs, logprobs.exp(), logprobs.argmax(-1), perplexity(logprobs, inputs.batch["labels"]))

    def kl(self, logprobs: Tensor, rows: slice = slice(None)) -> Tensor:
        """Summed KL(unedited || edited) over the real tokens of `rows`, from edited log-probabilities [rows, T, V].

        A dot product per position instead of elementwise passes: with a 49k-word vocabulary
        those cost as much as the upper blocks.
        """
        mask = self.inputs.batch["attention_mask"][rows].to(logprobs.dtype)
        gap = (self.logprobs[rows] - logprobs).flatten(0, 1).unsqueeze(2)  # [n*T, V, 1]
        per_token = torch.bmm(self.probs[rows].flatten(0, 1).unsqueeze(1), gap).view(mask.shape)
        return (per_token * mask).sum()

    def mean_kl(self, logprobs: Tensor) -> Tensor:
        """`kl` over every row, averaged over real tokens."""
        return self.kl(logprobs) / self.inputs.batch["attention_mask"].sum()


@dataclass(frozen=True)
class Procedure:
    """How an edit is made: `steps` gradient steps (ft), with a KL penalty on a locality sample (ft_kl),
    or, with `until_success`, steps until the edit holds, at most `steps` (ENN's protocol)."""

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
        """The editor interface (`editable_lm.editors`): edited weights and the gradient steps taken."""
        return edit_with_steps(model, edit, self)


@dataclass(frozen=True)
class Fluency:
    """ROME's fluency: the n-gram entropy of greedy generations from a fixed set of prompts."""

    prompts: tuple[str, ...]
    max_new_tokens: int

    def __call__(self, model: SplitForward, tokenizer, weights: Mapping[str, Tensor] | None = None) -> float:
        return mean_ngram_entropy(generate(model.model, tokenizer, list(self.prompts), self.max_new_tokens, weights))


def fluency_prompts(passages: list[dict], words: int = 8) -> tuple[str, ...]:
    """The first `words` words of each passage: prompts to generate from, the same for every edit and model."""
    return tuple(" ".join(passage["text"].split()[:words]) for passage in passages)


def test_sample(split_dir: str | Path, cfg, rel) -> tuple[list[dict], list[dict], Fluency]:
    """The held-out test edits, locality passages and fluency prompts every evaluation of single edits reads
    (`cfg`: the evaluate params, `rel`: reliability): the same for every model and editor."""
    from editable_lm.errors import EditLMError
    from editable_lm.storage import read_jsonl

    pairs = held_out(read_jsonl(Path(split_dir, "pairs_test.jsonl")), rel.n_edits, cfg.seed)
    test_passages = held_out(read_jsonl(Path(split_dir, "passages_test.jsonl")), cfg.n_ppl_passages + rel.n_fluency_prompts,
                             cfg.seed)
    fluency = Fluency(fluency_prompts(test_passages[cfg.n_ppl_passages :]), rel.fluency_tokens)
    if len(fluency.prompts) < rel.n_fluency_prompts:  # the test split has too few passages beyond the locality ones
        raise EditLMError(f"reliability.n_fluency_prompts: {rel.n_fluency_prompts} prompts wanted beyond the "
                          f"{cfg.n_ppl_passages} locality passages, but the test split has {len(test_passages)} passages")
    return pairs, test_passages[: cfg.n_ppl_passages], fluency


def predict(model: SplitForward, inputs: Prepared, params: Mapping[str, Tensor] | None = None) -> Tensor:
    """Next-token log-probabilities [B, T, V] at every position."""
    return torch.log_softmax(upcast(model.logits(inputs, params)), dim=-1)


@torch.no_grad()
def reference(model: SplitForward, tokenizer, passages: list[dict], max_len: int) -> Reference:
    """Encode passages and record the unedited model's predictions on them."""
    inputs = model.prepare(encode_passages(passages, tokenizer, max_len))
    return Reference.of(inputs, predict(model, inputs))


@torch.no_grad()
def locality(model: SplitForward, ref: Reference, params: Mapping[str, Tensor], chunk_tokens: int = 128) -> dict[str, float]:
    """What an edit did to unrelated passages: perplexity drawdown, KL(pre || post), top-1 agreement.

    Read chunk by chunk of passages (`logits_in_chunks`), never holding all edited logits at once.
    """
    batch = ref.inputs.batch
    nll = labelled = kl = agree = 0.0
    for rows, logits in model.logits_in_chunks(ref.inputs, params, chunk_tokens):
        logprobs = torch.log_softmax(upcast(logits), dim=-1)
        picked, mask = label_logprobs(logprobs, batch["labels"][rows])
        nll, labelled = nll - picked.sum().item(), labelled + mask.sum().item()
        kl += ref.kl(logprobs, rows).item()
        same = (logprobs.argmax(-1) == ref.top1[rows]) & batch["attention_mask"][rows].bool()
        agree += same.sum().item()
    tokens = batch["attention_mask"].sum().item()
    mean_nll = nll / labelled
    ppl = math.exp(mean_nll) if mean_nll < 700 else math.inf  # an edit can wreck the model: past exp's range
    return {
        "ppl_drawdown": relative_drawdown(ref.ppl, ppl),
        "ppl_post": ppl,  # absolute: a model made worse before any edit can look local relative to itself
        "kl": kl / tokens,
        "top1_agreement": agree / tokens,
    }


def edit_model(
    model: SplitForward, edit: Prepared, procedure: Procedure, start: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Edited weights (detached) after `procedure` on the prepared edit, from the model's or from `start`."""
    return edit_with_steps(model, edit, procedure, start)[0]


def edit_with_steps(
    model: SplitForward, edit: Prepared, procedure: Procedure, start: Mapping[str, Tensor] | None = None
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


def encode_probes(model: SplitForward, tokenizer, probes: list[tuple[str, str, str]], max_len: int) -> Prepared:
    """(prefix, new name, old name) probes as one prepared batch: the new-name rows, then the old-name rows."""
    examples = [encode_edit(tokenizer, prefix, new, max_len) for prefix, new, _ in probes]
    examples += [encode_edit(tokenizer, prefix, old, max_len) for prefix, _, old in probes]
    return model.prepare(collate(examples, tokenizer.pad_token_id, device()))


@torch.no_grad()
def new_name_wins(model: SplitForward, probes: Prepared, params: Mapping[str, Tensor] | None = None) -> Tensor:
    """For prepared probes [N]: is the new name more likely than the old one?"""
    logp = sequence_logprob(model.target_logits(probes, params), probes.targets).cpu()
    half = len(logp) // 2
    return logp[:half] > logp[half:]


def same_weights(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    """Do two dicts of edited weights hold the same tensors, bit for bit?"""
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


@torch.no_grad()
def measure_edit(
    model: SplitForward,
    tokenizer,
    pair: dict,
    leak_pairs: list[dict],
    procedures: list[Procedure],
    ref: Reference,
    max_len: int,
    fluency: Fluency | None = None,
) -> list[dict]:
    """Make one edit from the unedited weights with each procedure and measure everything about it.

    Counterfactual: the edit's own prefix; generality: other sentences naming the person;
    leakage: sentences about other people, where the new name should not start to win;
    fluency (if given): of generations from its prompts after the edit.
    The inputs are prepared once and shared by the procedures: one row each. Procedures that end
    on the same weights (edit-until-success stopping at the fixed step count) share their measurement.
    """
    new = model.prepare(encode_edits([pair], tokenizer, max_len))
    general = [(p["prefix"], p["new_name"], p["name"]) for p in pair.get("probes", [])]
    leaks = [(p["prefix"], pair["new_name"], p["name"]) for p in leak_pairs]
    probes = encode_probes(model, tokenizer, [(pair["prefix"], pair["new_name"], pair["name"]), *general, *leaks], max_len)
    wins_pre = new_name_wins(model, probes)
    logp_new_pre = sequence_logprob(model.target_logits(new), new.targets).item()

    def measure(edited: Mapping[str, Tensor]) -> dict:
        new_logits = model.target_logits(new, edited)
        wins = new_name_wins(model, probes, edited)
        leaked = wins[1 + len(general) :] & ~wins_pre[1 + len(general) :]
        return {
            "edit_success": float(edit_success(new_logits, new.targets).item()),
            "counterfactual_success": float(wins[0].item()),
            "generality": wins[1 : 1 + len(general)].float().mean().item() if general else None,
            "leakage": leaked.float().mean().item() if leaks else None,
            "neighbourhood": 1.0 - leaked.float().mean().item() if leaks else None,
            "logp_new_pre": logp_new_pre,
            "logp_new_post": sequence_logprob(new_logits, new.targets).item(),
            **locality(model, ref, edited),
            "fluency": fluency(model, tokenizer, edited) if fluency else None,
        }

    measured: list[tuple[dict[str, Tensor], dict]] = []
    rows = []
    for procedure in procedures:
        start = time.perf_counter()
        edited, steps = procedure.edit(model, tokenizer, new, [pair], max_len)
        seconds = time.perf_counter() - start
        metrics = next((m for weights, m in measured if same_weights(weights, edited)), None)
        if metrics is None:
            metrics = measure(edited)
            measured.append((edited, metrics))
        rows.append({
            "edit_id": pair["id"],
            "procedure": procedure.name,
            "edit_success": metrics["edit_success"],  # the columns in EDIT_METRICS order
            "edit_steps": steps,
            "steps_to_success": steps if metrics["edit_success"] else None,
            **metrics,
            "sec_per_edit": seconds,
        })
    return rows


def evaluate_edits(
    model: SplitForward,
    tokenizer,
    pairs: list[dict],
    procedures: list[Procedure],
    ref: Reference,
    max_len: int,
    n_leak_probes: int = 0,
    seed: int = 0,
    label: str = "",
    fluency: Fluency | None = None,
    n_fluency_edits: int = 0,
) -> list[dict]:
    """`measure_edit` for each pair and procedure, each from the unedited weights: a row per (pair, procedure).

    Leakage probes for an edit are `n_leak_probes` other pairs from other articles (seeded);
    fluency is measured on the first `n_fluency_edits` pairs (generation is slow).
    """
    rng = random.Random(seed)
    rows = []
    for index, pair in enumerate(tqdm(pairs, desc=label or None, unit="edit")):
        others = [p for p in pairs if p["article_id"] != pair["article_id"]]
        leak_pairs = rng.sample(others, min(n_leak_probes, len(others)))
        measured_fluency = fluency if index < n_fluency_edits else None
        rows += measure_edit(model, tokenizer, pair, leak_pairs, procedures, ref, max_len, measured_fluency)
    return rows


def log_schedule(n: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to and including n."""
    points = [m * 10**e for e in range(len(str(n)) + 1) for m in (1, 2, 5) if m * 10**e < n]
    return points + [n]


@torch.no_grad()
def sequential_edits(
    model: SplitForward, tokenizer, pairs: list[dict], procedure: Procedure, ref: Reference, max_len: int, label: str = ""
) -> list[dict]:
    """Edits one after another without resetting; on a log schedule, retention and locality.

    Retention is the fraction of all edits so far that still succeed.
    """
    checkpoints = set(log_schedule(len(pairs)))
    params, rows = None, []
    for count, pair in enumerate(tqdm(pairs, desc=f"{label} sequential".strip(), unit="edit"), start=1):
        params = edit_model(model, model.prepare(encode_edits([pair], tokenizer, max_len)), procedure, start=params)
        if count in checkpoints:
            done = model.prepare(encode_edits(pairs[:count], tokenizer, max_len))
            retention = edit_success(model.target_logits(done, params), done.targets).float().mean().item()
            rows.append({"n_edits": count, "retention": retention, **locality(model, ref, params)})
    return rows


@torch.no_grad()
def batched_edits(
    model: SplitForward, tokenizer, pairs: list[dict], procedure: Procedure, ref: Reference, max_len: int, batch_size: int
) -> list[dict]:
    """Edits made `batch_size` at a time, one gradient step sequence on their joint loss, from the unedited weights.

    A row per batch: the fraction of its edits that succeed, and what the batch did to the passages.
    Fair batches need `procedure.per_edit` (each edit pulls as hard as it would alone) and their own
    tuned lr and steps (`tune_batches`).
    """
    return batched_grid(model, tokenizer, pairs, [procedure], ref, max_len, batch_size)[procedure.name]


@torch.no_grad()
def batched_grid(
    model: SplitForward, tokenizer, pairs: list[dict], procedures: list[Procedure], ref: Reference, max_len: int,
    batch_size: int,
) -> dict[str, list[dict]]:
    """`batched_edits` for each procedure (name -> rows), the batches prepared once for all of them: a batch's
    lower blocks over `batch_size` edits cost far more than its few edit steps."""
    chunks = [pairs[start : start + batch_size] for start in range(0, len(pairs), batch_size)]
    batches = [model.prepare(encode_edits(chunk, tokenizer, max_len)) for chunk in chunks]
    out = {}
    for procedure in procedures:
        rows = []
        for index, (chunk, batch) in enumerate(zip(chunks, batches)):
            start = time.perf_counter()
            params, _ = procedure.edit(model, tokenizer, batch, chunk, max_len)
            seconds = time.perf_counter() - start
            success = edit_success(model.target_logits(batch, params), batch.targets).float().mean().item()
            rows.append({"batch_size": batch_size, "batch": index, "edit_success": success, **locality(model, ref, params),
                         "seconds": seconds})
        out[procedure.name] = rows
    return out


def without_probes(pairs: list[dict]) -> list[dict]:
    """Pairs stripped of generality probes: for measuring edit strength, not generality."""
    return [{**pair, "probes": []} for pair in pairs]


def strength_grid(lrs, steps, lr_for, per_edit: bool = False) -> list[Procedure]:
    """Plain FT edits at every (lr, steps), named `lr=<lr>,steps=<steps>`; `lr_for(lr)` gives per-tensor rates."""
    return [Procedure(f"lr={lr:g},steps={n}", lr_for(lr), n, per_edit=per_edit) for lr in lrs for n in steps]


def setting_of(name: str) -> dict[str, float]:
    """`lr=<lr>,steps=<steps>` (a `strength_grid` name) as {"lr": ..., "steps": ...}."""
    fields = dict(part.split("=") for part in name.split(","))
    return {"lr": float(fields["lr"]), "steps": int(fields["steps"])}


def best_setting(summary: dict[str, dict], target: float) -> str:
    """Among settings (name -> summary), the lowest drawdown of those reaching `target` edit success;
    if none does, the highest success (the first listed on a tie)."""
    reached = [name for name, s in summary.items() if s["edit_success"] >= target]
    if reached:
        return min(reached, key=lambda name: summary[name]["ppl_drawdown"])
    return max(summary, key=lambda name: summary[name]["edit_success"])


def held_out(rows: list[dict], n: int, seed: int) -> list[dict]:
    """The first `n` rows of a seeded shuffle: a smaller n takes a prefix of a larger one's sample."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows[:n]


def procedures(
    model: SplitForward, tokenizer, loc_passages: list[dict], lr, steps: int, kl_weight: float, max_len: int, max_steps: int = 0
) -> list[Procedure]:
    """The edit procedures compared: plain fine-tuning steps, the same with a KL penalty (if
    `kl_weight`), and steps until the edit holds (if `max_steps`)."""
    compared = [Procedure("ft", lr, steps)]
    if kl_weight:
        compared.append(Procedure("ft_kl", lr, steps, kl_weight, reference(model, tokenizer, loc_passages, max_len)))
    if max_steps:
        compared.append(Procedure("until_success", lr, max_steps, until_success=True))
    return compared


@dataclass(frozen=True)
class LoadedModel:
    """One of the compared checkpoints, ready to edit, with its reference passages."""

    label: str
    model: SplitForward
    tokenizer: object
    ref: Reference
    path: Path

    def lr(self, lr: float) -> dict[str, Tensor | float]:
        """`lr` per edited tensor, scaled by the inner rates MAML learned for this checkpoint, if any."""
        return edit_learning_rates(self.path, self.model.names, lr)


def loaded_models(
    paths: Mapping[str, str | Path], edit: EditParams, passages: list[dict], max_len: int, split: bool = True
) -> Iterator[LoadedModel]:
    """Each checkpoint in turn, frozen, split below the edit, with its reference.

    All are loaded first: the blocks they share (those training left alone) then run once per input
    for all of them (`SharedLower`).
    """
    loaded = {label: load_for_editing(path, edit) for label, path in paths.items()}
    shared = SharedLower.of([model for model, _, _ in loaded.values()]) if split else None
    for label, (model, tokenizer, names) in loaded.items():
        forward = SplitForward(model, names, split, shared)
        yield LoadedModel(label, forward, tokenizer, reference(forward, tokenizer, passages, max_len), Path(paths[label]))
