"""Edit strength sweep (lr x steps): edit success against perplexity drawdown, per model."""

from pathlib import Path

from editable_lm.cli import run_stage, stage_args
from editable_lm.evaluation import MODELS, Procedure, evaluate_edits, held_out, reference
from editable_lm.metrics import summarize
from editable_lm.models import edit_learning_rates, load_for_editing
from editable_lm.storage import read_jsonl, write_csv, write_json
KEYS = ("edit_success", "counterfactual_success", "ppl_drawdown", "kl")


def main() -> None:
    params, args = stage_args(__doc__, "--split", *(f"--{m}" for m in MODELS), "--metrics", "--rows")
    cfg, sweep = params.evaluate, params.sweep
    # Without probes: the sweep measures strength, not generality or leakage.
    pairs = [{**p, "probes": []} for p in held_out(read_jsonl(Path(args.split, "pairs_test.jsonl")), sweep.n_edits, cfg.seed)]
    passages = held_out(read_jsonl(Path(args.split, "passages_test.jsonl")), cfg.n_ppl_passages, cfg.seed)
    summary, rows = {}, []
    for label in MODELS:
        path = getattr(args, label)
        model, tokenizer, names = load_for_editing(path, params.edit)
        ref = reference(model, tokenizer, passages, cfg.seq_len)
        summary[label] = {}
        for lr in sweep.lrs:
            for steps in sweep.steps:
                procedure = Procedure("ft", edit_learning_rates(path, names, lr), steps)
                result = summarize(evaluate_edits(model, tokenizer, pairs, names, procedure, ref, cfg.seq_len, label=label), KEYS)
                summary[label][f"lr={lr:g},steps={steps}"] = result
                rows.append({"model": label, "lr": lr, "steps": steps, **result})
    write_json(args.metrics, summary)
    write_csv(args.rows, rows)


if __name__ == "__main__":
    run_stage(main)
