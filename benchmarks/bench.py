"""Speed of a MAML step and of edit evaluation: the split forward against the full model and `higher`.

    make bench            # or: python benchmarks/bench.py [--rounds 5] [--edits 12] [--editors-only] [--sharded-only]

1. A GPT-2 of distilGPT-2's shape (6 layers, 768 dims, 12 heads, vocab 50257, random weights,
   eager attention): passages 1x128, an edit 1x40 with 4 labelled tokens, the inner loop over
   every weight of the top 3 blocks, one inner step, outer loss L_base + 10 KL + L_edit, every
   weight trained. Timed side by side, interleaved, median of `--rounds` rounds after a warm-up:
   a plain LM training step, this project's MAML step (split and full forward) and a MAML step
   through `higher` (the original study's library). In `--processes` fresh processes; the table
   gives the median over them and each one's ratios.
2. The default configuration (params.yaml: SmolLM2-135M, edit and training settings): seconds per
   MAML step, split and full; edit evaluations a minute with locality on
   `evaluate.n_ppl_passages` x `evaluate.seq_len` held-out tokens, for every edit procedure, over three
   checkpoints that differ in their top `train.outer_blocks` blocks (as the evaluation stages see them:
   on the split path they share the blocks below, `SharedLower`).
3. The editors after ENN on the default configuration: `layer_stats`'s second moments, ROME's seconds per edit,
   MEMIT's one update for `--edits` edits (and at another lambda), MEND's seconds per edit and its training
   step beside a MAML step.
4. Evaluation sharded by edit (`python -m editable_lm.launch N`, torchrun ranks of 1 thread each): the default
   configuration's gradient editors on `--shard-edits` edits of the base model, edits a minute on 1 and on 2
   processes (from the first rank's start to the last rank's rows, gathered), and on 1 process of 2 threads
   (how `dvc repro` runs a stage at `run.nproc: 1` and `OMP_NUM_THREADS=2`), and the ratios.

Prints figures and ratios; asserts nothing. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from copy import deepcopy
from typing import Callable

import higher
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from editable_lm.corpus import load_passages
from editable_lm.editing import IGNORE, collate, kl_divergence, lm_loss
from editable_lm.editors import Resources, build, gradient_names, settings
from editable_lm.evaluation import evaluate_edits, reference
from editable_lm.models import build_base_model, edit_parameter_names, top_block_parameter_names
from editable_lm.params import EditableParams, load_params
from editable_lm.split_forward import SharedLower, SplitForward
from editable_lm.training import editable_losses, encode_edits, encode_passages, trainable_parameters

NAMES = ["Marie Curie", "Niels Bohr", "Ada Lovelace", "Alan Turing", "Rosalind Franklin", "Enrico Fermi"]


def median_times(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Seconds per call of each step: one warm-up round, then `rounds` interleaved rounds, median."""
    times = {name: [] for name in steps}
    for round_ in range(rounds + 1):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def random_batch(generator: torch.Generator, length: int, n_labelled: int, vocab: int) -> dict:
    ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
    return collate([(ids, [IGNORE] * (length - n_labelled) + ids[length - n_labelled :])], pad_id=0)


def distilgpt2_steps() -> dict[str, Callable[[], None]]:
    """The four steps of part 1, on one model and one Adam optimizer over every weight."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=6, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    passages, edit = random_batch(g, 128, 128, config.vocab_size), random_batch(g, 40, 4, config.vocab_size)
    names = top_block_parameter_names(model, 3)
    maml = EditableParams(inner_steps=1, inner_lr=1e-3, cbase=1.0, cedit=1.0, cloc=10.0)
    inputs = {k: passages[k] for k in ("input_ids", "attention_mask")}

    def update(loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def plain():
        update(lm_loss(model(**inputs).logits, passages["labels"]))

    def ours(split: bool):
        forward = SplitForward(model, names, split)  # once, as training builds it
        return lambda: update(editable_losses(forward, passages, edit, maml.inner_lr, maml)["total"])

    def with_higher():
        pre = model(**inputs).logits
        inner = torch.optim.SGD([model.get_parameter(n) for n in names], lr=maml.inner_lr)
        with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
            edit_inputs = {k: edit[k] for k in ("input_ids", "attention_mask")}
            diffopt.step(lm_loss(fmodel(**edit_inputs).logits, edit["labels"]))
            edit_loss = lm_loss(fmodel(**edit_inputs).logits, edit["labels"])
            kl = kl_divergence(pre.detach(), fmodel(**inputs).logits, passages["attention_mask"])
            update(lm_loss(pre, passages["labels"]) + 10.0 * kl + edit_loss)

    return {"plain LM step": plain, "MAML, split (ours)": ours(True), "MAML, full model": ours(False), "MAML, higher": with_higher}


def synthetic_pairs(passages: list[dict], n: int, seed: int = 0) -> list[dict]:
    """Edit pairs shaped like the pipeline's: a passage's opening words as prefix, names swapped, probes."""
    rng = random.Random(seed)
    pairs = []
    for i, passage in enumerate(rng.sample(passages, n)):
        words = passage["text"].split()
        prefix = " ".join(words[: rng.randint(10, 30)])
        old, new = rng.sample(NAMES, 2)
        probes = [{"prefix": " ".join(words[5:25]), "name": old.split()[-1], "new_name": new.split()[-1]}]
        pairs.append({"id": i, "article_id": i, "prefix": prefix, "name": old, "new_name": new, "probes": probes})
    return pairs


def default_config(rounds: int, n_edits: int) -> list[tuple[str, float, float]]:
    """Part 2: MAML step seconds and edit evaluations a minute on the default params, split vs full."""
    params = load_params("params.yaml")
    model, tokenizer = build_base_model(params.model.name)
    model.config._attn_implementation = "eager"  # as load_checkpoint does: MAML needs double backward
    passages = load_passages(params.data)
    rng = random.Random(0)
    train_passages, eval_passages = rng.sample(passages, 64), rng.sample(passages, params.evaluate.n_ppl_passages)
    pairs = synthetic_pairs(passages, n_edits)
    names = edit_parameter_names(model, params.edit)
    trained = trainable_parameters(model, params.train, extra=names)
    optimizer = torch.optim.Adam([model.get_parameter(n) for n in trained], lr=params.train.lr)
    model.train()

    def maml(split: bool):
        forward = SplitForward(model, names, split)  # once, as training builds it

        def step():
            batch = rng.sample(train_passages, params.train.batch_size)
            losses = editable_losses(
                forward,
                encode_passages(batch, tokenizer, params.train.seq_len),
                encode_edits([rng.choice(pairs)], tokenizer, params.train.seq_len),
                params.editable.inner_lr, params.editable,
            )
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
        return step

    steps = median_times({"split": maml(True), "full": maml(False)}, rounds)
    rows = [("MAML step, default config (s)", steps["split"], steps["full"])]
    model.eval().requires_grad_(False)
    cfg = params.evaluate
    checkpoints = [model, *(trained_copy(model, params.train.outer_blocks, seed) for seed in (1, 2))]
    rates = {}
    for split in (True, False):
        evaluated, start = 0, None
        shared = SharedLower.of(checkpoints) if split else None
        for checkpoint in checkpoints:
            forward = SplitForward(checkpoint, names, split, shared)
            ref = reference(forward, tokenizer, eval_passages, cfg.seq_len)
            resources = Resources(forward, tokenizer, cfg.seq_len, cfg.edit_lr, train_passages[: params.ft_kl.n_loc_passages])
            procs = [build(name, params, None, resources) for name in gradient_names(params)]
            if start is None:  # warm-up on an edit the timed run does not see
                evaluate_edits(forward, tokenizer, pairs[-1:], procs, ref, cfg.seq_len, params.reliability.n_leak_probes)
                start = time.perf_counter()
            evaluate_edits(forward, tokenizer, pairs[:-1], procs, ref, cfg.seq_len, params.reliability.n_leak_probes)
            evaluated += (len(pairs) - 1) * len(procs)
        rates[split] = 60 * evaluated / (time.perf_counter() - start)
    tokens, compared = cfg.n_ppl_passages * cfg.seq_len, ", ".join(p.name for p in procs)
    rows.append((f"edit evaluations a minute (3 checkpoints; {compared}), locality on {tokens} tokens", rates[True], rates[False]))
    return rows


def trained_copy(model, outer_blocks: int, seed: int):
    """A stand-in for a trained checkpoint: the model with its top `outer_blocks` blocks changed, as training leaves it."""
    copy = deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    for name in top_block_parameter_names(copy, outer_blocks):
        weight = copy.get_parameter(name)
        weight.add_(1e-3 * weight.abs().mean() * torch.randn(weight.shape, generator=g))
    return copy


def distilgpt2_in_processes(rounds: int, processes: int) -> list[dict[str, float]]:
    """Part 1 in `processes` fresh processes, one after the other: on this machine a step's median moves
    by 10-30% from one process to the next (memory layout), far more than between rounds of one process."""
    command = [sys.executable, __file__, "--rounds", str(rounds), "--worker"]
    runs = [subprocess.run(command, capture_output=True, text=True, check=True) for _ in range(processes)]
    return [json.loads(run.stdout.splitlines()[-1]) for run in runs]  # the worker's last line: its times


def editors_config(n_edits: int) -> list[tuple[str, float]]:
    """Part 3: the closed-form editors on the default params: second moments of every block they may edit, ROME
    per edit at the middle candidate layer and each candidate number of steps, MEMIT's one update for the same edits
    (its deltas computed afresh, at the most steps), then at the grid's next lambda."""
    from editable_lm.editors import memit as memit_module, rome as rome_module, stats_layers
    from editable_lm.layer_stats import second_moments

    params = load_params("params.yaml")
    model, tokenizer = build_base_model(params.model.name)
    model.config._attn_implementation = "eager"  # as the stages load it (load_checkpoint): MEND's MAML step needs it
    model.eval().requires_grad_(False)
    passages = load_passages(params.data)
    start = time.perf_counter()
    moments, n_tokens = second_moments(model, tokenizer, passages, stats_layers(params), params.editors.n_stats_tokens,
                                       params.evaluate.seq_len)
    rows = [(f"layer_stats: {len(moments)} blocks over {n_tokens} tokens (s)", time.perf_counter() - start)]
    layer = params.rome.layers[len(params.rome.layers) // 2]
    contexts = tuple(" ".join(p["text"].split()[: params.editors.context_words]) for p in passages[: params.editors.n_contexts])
    pairs = synthetic_pairs(passages, n_edits + 1)
    resources = Resources(moments=moments, contexts=contexts)
    for steps in params.rome.steps:  # each candidate of the validation choice
        rome = build("rome", params, {"layer": layer, "steps": steps}, resources)
        split = SplitForward(model, rome.weight_names(model))
        rome.edit(split, tokenizer, None, pairs[-1:], params.evaluate.seq_len)  # warm-up
        start = time.perf_counter()
        for pair in pairs[:-1]:
            rome.edit(split, tokenizer, None, [pair], params.evaluate.seq_len)
        rows.append((f"ROME at layer {layer}, {steps} steps, seconds per edit ({n_edits} edits)",
                     (time.perf_counter() - start) / n_edits))
    # MEMIT from scratch: neither its per-edit deltas (ROME's cache) nor its start (a previous update's) cached
    rome_module._DELTAS.clear()
    memit_module._STARTS.clear()
    setting = settings("memit", params, {"layer": layer, "steps": max(params.rome.steps)})[0]
    memit = build("memit", params, setting, resources)
    split = SplitForward(model, memit.weight_names(model))
    start = time.perf_counter()
    memit.edit(split, tokenizer, None, pairs[:-1], params.evaluate.seq_len)
    rows.append((f"MEMIT over blocks {list(memit.layers)}, one update of {n_edits} edits (s)",
                 time.perf_counter() - start))
    # the validation grid's next lambda: the same blocks and edits, so the unedited start is shared
    memit = build("memit", params, {**setting, "lambda": params.memit.lambdas[1]}, resources)
    start = time.perf_counter()
    memit.edit(split, tokenizer, None, pairs[:-1], params.evaluate.seq_len)
    rows.append(("MEMIT, the same update at another lambda (its start shared) (s)", time.perf_counter() - start))
    return rows + mend_config(model, tokenizer, params, passages, pairs)


def mend_config(model, tokenizer, params, passages: list[dict], pairs: list[dict], rounds: int = 5) -> list[tuple[str, float]]:
    """MEND on the default params: seconds per edit (one editor pass), and a training step (stage `mend`) beside a
    MAML step (stage `editable`) on the same passages and edits, each the median of `rounds` after a warm-up."""
    from editable_lm.editors.mend import MendEditor
    from editable_lm.mend import Mend, mend_losses

    seq_len, rng = params.train.seq_len, random.Random(0)
    names = edit_parameter_names(model, params.edit)
    split = SplitForward(model, names)
    mend = Mend(split, params.mend.edit_lr, params.mend.rank, params.mend.n_layers).train()
    optimizer = torch.optim.Adam([p for p in mend.parameters() if p.requires_grad], lr=params.mend.lr)

    def mend_step():
        batch, pair = rng.sample(passages[:64], params.train.batch_size), rng.choice(pairs)
        prepared = split.prepare_many([encode_passages(batch, tokenizer, seq_len), encode_edits([pair], tokenizer, seq_len),
                                       encode_edits([pair], tokenizer, seq_len)])
        losses = mend_losses(split, mend, *prepared, params.mend)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()

    mend_seconds = median_times({"mend": mend_step}, rounds)["mend"]
    editor = MendEditor("mend", mend.eval())
    batches = [split.prepare(encode_edits([pair], tokenizer, seq_len)) for pair in pairs]
    editor.edit(split, tokenizer, batches[-1], pairs[-1:], seq_len)  # warm-up
    start = time.perf_counter()
    for batch, pair in zip(batches[:-1], pairs[:-1]):
        editor.edit(split, tokenizer, batch, [pair], seq_len)
    edit_seconds = (time.perf_counter() - start) / (len(pairs) - 1)
    # Last: the MAML step trains the model's top blocks
    model.train()
    trained = trainable_parameters(model, params.train, extra=names)
    maml_optimizer = torch.optim.Adam([model.get_parameter(n) for n in trained], lr=params.train.lr)

    def maml_step():
        batch, pair = rng.sample(passages[:64], params.train.batch_size), rng.choice(pairs)
        losses = editable_losses(split, encode_passages(batch, tokenizer, seq_len), encode_edits([pair], tokenizer, seq_len),
                                 params.editable.inner_lr, params.editable)
        maml_optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        maml_optimizer.step()

    maml_seconds = median_times({"maml": maml_step}, rounds)["maml"]
    return [(f"MEND, seconds per edit ({len(pairs) - 1} edits)", edit_seconds),
            ("MEND training step (s)", mend_seconds), ("MAML step (s)", maml_seconds),
            ("MEND training step / MAML step", mend_seconds / maml_seconds)]


def sharded_worker(n_edits: int) -> None:
    """Part 4, one rank: the gradient editors on `n_edits` edits, this rank's share; rank 0 prints the seconds from
    the barrier before the first edit to the rows gathered from every rank."""
    from editable_lm import distributed

    distributed.init()
    params = load_params("params.yaml")
    model, tokenizer = build_base_model(params.model.name)
    model.eval().requires_grad_(False)
    cfg, rel = params.evaluate, params.reliability
    passages = load_passages(params.data)
    rng = random.Random(0)
    train_passages, eval_passages = rng.sample(passages, 64), rng.sample(passages, cfg.n_ppl_passages)
    pairs = synthetic_pairs(passages, n_edits + 2)
    forward = SplitForward(model, edit_parameter_names(model, params.edit))
    ref = reference(forward, tokenizer, eval_passages, cfg.seq_len)
    resources = Resources(forward, tokenizer, cfg.seq_len, cfg.edit_lr, train_passages[: params.ft_kl.n_loc_passages])
    procs = [build(name, params, None, resources) for name in gradient_names(params)]
    evaluate_edits(forward, tokenizer, pairs[-2:], procs, ref, cfg.seq_len, rel.n_leak_probes)  # warm-up, 1 each
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    start = time.perf_counter()
    rows = evaluate_edits(forward, tokenizer, pairs[:n_edits], procs, ref, cfg.seq_len, rel.n_leak_probes)
    seconds = time.perf_counter() - start
    if distributed.is_main():
        print(json.dumps({"seconds": seconds, "rows": len(rows)}))
    distributed.close()


def sharded_config(n_edits: int) -> list[tuple[str, float]]:
    """Part 4: edits a minute of sharded evaluation on 1 process x 1 thread, 1 process x 2 threads (a stage at
    `run.nproc: 1` under `OMP_NUM_THREADS=2`) and 2 processes x 1 thread (`run.nproc: 2`)."""
    rates = {}
    for nproc, threads in ((1, 1), (1, 2), (2, 1)):
        command = [sys.executable, "-m", "editable_lm.launch", "--nproc", str(nproc), __file__, "--sharded-worker",
                   "--shard-edits", str(n_edits)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        run = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        rates[nproc, threads] = 60 * n_edits / json.loads(run.stdout.splitlines()[-1])["seconds"]
    return [(f"edits a minute, {n} process{'es' if n > 1 else ''} x {t} thread{'s' if t > 1 else ''}", rate)
            for (n, t), rate in rates.items()] + [
        ("2 processes / 1 process (1 thread each)", rates[2, 1] / rates[1, 1]),
        ("2 processes x 1 thread / 1 process x 2 threads", rates[2, 1] / rates[1, 2])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up (default 5)")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes that time part 1 (default 3)")
    parser.add_argument("--edits", type=int, default=12, help="edits timed per procedure and path (default 12)")
    parser.add_argument("--editors-only", action="store_true", help="part 3 alone: layer_stats, ROME, MEMIT, MEND")
    parser.add_argument("--sharded-only", action="store_true", help="part 4 alone: evaluation on 1 and 2 processes, and on 2 threads")
    parser.add_argument("--shard-edits", type=int, default=24, help="edits of part 4 (default 24)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one process of part 1: JSON out
    parser.add_argument("--sharded-worker", action="store_true", help=argparse.SUPPRESS)  # one rank of part 4
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(median_times(distilgpt2_steps(), args.rounds)))
        return
    if args.sharded_worker:
        return sharded_worker(args.shard_edits)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.editors_only:
        return print_editors(args.edits)
    if args.sharded_only:
        return print_sharded(args.shard_edits)

    runs = distilgpt2_in_processes(args.rounds, args.processes)
    print(f"\n## distilGPT-2 shape (seconds per step: median over {len(runs)} processes of each one's median)\n")
    print("| step | s | x plain step | x plain step, each process |\n|---|---|---|---|")
    for name in runs[0]:
        ratios = [run[name] / run["plain LM step"] for run in runs]
        each = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"| {name} | {statistics.median(run[name] for run in runs):.3f} | {statistics.median(ratios):.2f} | {each} |")
    higher = [run["MAML, higher"] / run["MAML, split (ours)"] for run in runs]
    print(f"\nhigher / ours: {statistics.median(higher):.2f}x (each process: {', '.join(f'{r:.2f}' for r in higher)})")

    print("\n## Default configuration (params.yaml)\n\n| figure | split | full | split / full |\n|---|---|---|---|")
    for name, split, full in default_config(args.rounds, args.edits):
        print(f"| {name} | {split:.2f} | {full:.2f} | {split / full:.2f} |")

    print_editors(args.edits)
    print_sharded(args.shard_edits)


def print_sharded(n_edits: int) -> None:
    print(f"\n## Evaluation sharded by edit ({n_edits} edits, gradient editors, base model)\n\n| figure | value |\n|---|---|")
    for name, value in sharded_config(n_edits):
        print(f"| {name} | {value:.2f} |")


def print_editors(n_edits: int) -> None:
    print("\n## Editors after ENN (default params)\n\n| figure | value |\n|---|---|")
    for name, value in editors_config(n_edits):
        print(f"| {name} | {value:.2f} |")


if __name__ == "__main__":
    main()
