"""Edit a model on held-out edits and measure reliability, generality, locality and leakage.

Every function edits through `apply_edit`, which returns new weights and leaves the model
alone: "restoring" a model between edits is dropping the dict.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import torch
from torch import Tensor
from tqdm import tqdm

from editable_lm import distributed
from editable_lm.editing import collate, encode_edit
from editable_lm.editors import Editor
from editable_lm.editors.gradient import FineTune, edit_model
from editable_lm.fluency import generate, mean_ngram_entropy
from editable_lm.locality import Reference, locality, reference
from editable_lm.metrics import edit_success, sequence_logprob
from editable_lm.models import device, edit_learning_rates, load_for_editing
from editable_lm.params import EditParams
from editable_lm.split_forward import Prepared, SharedLower, SplitForward
from editable_lm.training import encode_edits

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
    editors: list[Editor],
    ref: Reference,
    max_len: int,
    fluency: Fluency | None = None,
) -> list[dict]:
    """Make one edit from the unedited weights with each editor and measure everything about it.

    Counterfactual: the edit's own prefix; generality: other sentences naming the person;
    leakage: sentences about other people, where the new name should not start to win;
    fluency (if given): of generations from its prompts after the edit.
    The inputs are prepared once and shared by the editors: one row each (its `procedure` column: the editor's
    name). Editors that end on the same weights (edit-until-success stopping at the fixed step count) share their measurement.
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
    for editor in editors:
        start = time.perf_counter()
        edited, steps = editor.edit(model, tokenizer, new, [pair], max_len)
        seconds = time.perf_counter() - start
        metrics = next((m for weights, m in measured if same_weights(weights, edited)), None)
        if metrics is None:
            metrics = measure(edited)
            measured.append((edited, metrics))
        rows.append({
            "edit_id": pair["id"],
            "procedure": editor.name,
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
    editors: list[Editor],
    ref: Reference,
    max_len: int,
    n_leak_probes: int = 0,
    seed: int = 0,
    label: str = "",
    fluency: Fluency | None = None,
    n_fluency_edits: int = 0,
) -> list[dict]:
    """`measure_edit` for each pair and editor, each from the unedited weights: a row per (pair, editor).

    Leakage probes for an edit are up to `n_leak_probes` of its own `neighbours` (CounterFact's neighbourhood
    prompts, zsRE's unrelated question) if it has them, else `n_leak_probes` other pairs from other articles
    (seeded); fluency is measured on the first `n_fluency_edits` pairs (generation is slow). Under torchrun each
    rank measures its share of the pairs and every rank gets all the rows, in pair order.
    """
    rng = random.Random(seed)
    plan = []  # every pair's probes are drawn in order on every rank, whichever rank measures it
    for index, pair in enumerate(pairs):
        if "neighbours" in pair:
            leak_pairs = pair["neighbours"][:n_leak_probes]
        else:
            others = [p for p in pairs if p["article_id"] != pair["article_id"]]
            leak_pairs = rng.sample(others, min(n_leak_probes, len(others)))
        plan.append((pair, leak_pairs, fluency if index < n_fluency_edits else None))
    mine = distributed.shard(plan, *distributed.rank_and_world())  # a rank may have none: more ranks than edits
    measured = [measure_edit(model, tokenizer, pair, leak_pairs, editors, ref, max_len, measured_fluency)
                for pair, leak_pairs, measured_fluency in tqdm(mine, desc=label or None, unit="edit")]
    return [row for rows in distributed.gather_shards(measured, len(plan)) for row in rows]


def log_schedule(n: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to and including n."""
    points = [m * 10**e for e in range(len(str(n)) + 1) for m in (1, 2, 5) if m * 10**e < n]
    return points + [n]


@torch.no_grad()
def sequential_edits(
    model: SplitForward, tokenizer, pairs: list[dict], procedure: FineTune, ref: Reference, max_len: int, label: str = ""
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
    model: SplitForward, tokenizer, pairs: list[dict], procedure: FineTune, ref: Reference, max_len: int, batch_size: int
) -> list[dict]:
    """Edits made `batch_size` at a time, one gradient step sequence on their joint loss, from the unedited weights.

    A row per batch: the fraction of its edits that succeed, and what the batch did to the passages.
    Fair batches need `procedure.per_edit` (each edit pulls as hard as it would alone) and their own
    tuned lr and steps (`tune_batches`).
    """
    return batched_grid(model, tokenizer, pairs, [procedure], ref, max_len, batch_size)[procedure.name]


@torch.no_grad()
def batched_grid(
    model: SplitForward, tokenizer, pairs: list[dict], editors: list[Editor], ref: Reference, max_len: int,
    batch_size: int,
) -> dict[str, list[dict]]:
    """`batched_edits` for each editor (name -> rows), the batches prepared once for all of them: a batch's
    lower blocks over `batch_size` edits cost far more than its few edit steps. Under torchrun each rank makes
    its share of the batches, and every rank gets all the rows."""
    chunks = [pairs[start : start + batch_size] for start in range(0, len(pairs), batch_size)]
    mine = distributed.shard(list(enumerate(chunks)), *distributed.rank_and_world())
    batches = [model.prepare(encode_edits(chunk, tokenizer, max_len)) for _, chunk in mine]
    out = {}
    for editor in editors:
        rows = []
        for (index, chunk), batch in zip(mine, batches):
            start = time.perf_counter()
            params, _ = editor.edit(model, tokenizer, batch, chunk, max_len)
            seconds = time.perf_counter() - start
            success = edit_success(model.target_logits(batch, params), batch.targets).float().mean().item()
            rows.append({"batch_size": batch_size, "batch": index, "edit_success": success, **locality(model, ref, params),
                         "seconds": seconds})
        out[editor.name] = distributed.gather_shards(rows, len(chunks))
    return out


def without_probes(pairs: list[dict]) -> list[dict]:
    """Pairs stripped of generality probes: for measuring edit strength, not generality."""
    return [{**pair, "probes": []} for pair in pairs]


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
