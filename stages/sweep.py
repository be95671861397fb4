"""Edit strength sweep (lr x steps): edit success against perplexity drawdown, per model."""

from pathlib import Path

from editable_lm.cli import run_stage, stage_args
from editable_lm.evaluation import MODELS, Procedure, evaluate_edits, held_out, loaded_models
from editable_lm.metrics import summarize_by
from editable_lm.storage import read_jsonl, write_csv, write_json

KEYS = ("edit_success", "counterfactual_success", "ppl_drawdown", "kl")


def main() -> None:
    params, args = stage_args(__doc__, "--split", *(f"--{m}" for m in MODELS), "--metrics", "--rows")
    cfg, sweep = params.evaluate, params.sweep
    # Without probes: the sweep measures strength, not generality or leakage.
    pairs = [{**p, "probes": []} for p in held_out(read_jsonl(Path(args.split, "pairs_test.jsonl")), sweep.n_edits, cfg.seed)]
    passages = held_out(read_jsonl(Path(args.split, "passages_test.jsonl")), cfg.n_ppl_passages, cfg.seed)
    summary, rows = {}, []
    for m in loaded_models({label: getattr(args, label) for label in MODELS}, params.edit, passages, cfg.seq_len):
        grid = [(lr, steps) for lr in sweep.lrs for steps in sweep.steps]
        procs = [Procedure(f"lr={lr:g},steps={steps}", m.lr(lr), steps) for lr, steps in grid]
        summary[m.label] = summarize_by(evaluate_edits(m.model, m.tokenizer, pairs, procs, m.ref, cfg.seq_len, label=m.label), "procedure", KEYS)
        rows += [{"model": m.label, "lr": lr, "steps": steps, **summary[m.label][p.name]} for (lr, steps), p in zip(grid, procs)]
    write_json(args.metrics, summary)
    write_csv(args.rows, rows)


if __name__ == "__main__":
    run_stage(main)
