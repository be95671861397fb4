"""Edit strength sweep (lr x steps) on test edits: edit success against perplexity drawdown, per model, and
each model's lowest drawdown at matched success (`tune.target_success`), with paired differences."""

from pathlib import Path

from editable_lm.cli import run_stage, stage_args
from editable_lm.evaluation import MODELS, best_setting, evaluate_edits, held_out, loaded_models, strength_grid, without_probes
from editable_lm.metrics import paired_bootstrap, summarize_by
from editable_lm.storage import read_jsonl, write_csv, write_json

KEYS = ("edit_success", "counterfactual_success", "ppl_drawdown", "kl")


def main() -> None:
    params, args = stage_args(__doc__, "--split", *(f"--{m}" for m in MODELS), "--metrics", "--rows")
    cfg, sweep, n_boot = params.evaluate, params.sweep, params.reliability.n_bootstrap
    pairs = without_probes(held_out(read_jsonl(Path(args.split, "pairs_test.jsonl")), sweep.n_edits, cfg.seed))
    passages = held_out(read_jsonl(Path(args.split, "passages_test.jsonl")), sweep.n_ppl_passages, cfg.seed)
    summary, rows, matched = {"n_edits": len(pairs), "target_success": params.tune.target_success}, [], {}
    for m in loaded_models({label: getattr(args, label) for label in MODELS}, params.edit, passages, cfg.seq_len):
        procs = strength_grid(sweep.lrs, sweep.steps, m.lr)
        edit_rows = evaluate_edits(m.model, m.tokenizer, pairs, procs, m.ref, cfg.seq_len, label=m.label)
        grid = summarize_by(edit_rows, "procedure", KEYS, n_boot, cfg.seed)
        best = best_setting(grid, params.tune.target_success)
        matched[m.label] = [r["ppl_drawdown"] for r in edit_rows if r["procedure"] == best]
        summary[m.label] = {"matched": {"setting": best, **grid[best]}, "grid": grid}
        settings = [(lr, steps) for lr in sweep.lrs for steps in sweep.steps]
        rows += [{"model": m.label, "lr": lr, "steps": steps, **grid[p.name]} for (lr, steps), p in zip(settings, procs)]
    # Drawdown at each model's matched setting, paired over the same edits.
    summary["differences"] = {
        f"editable-{other}": {"ppl_drawdown": paired_bootstrap(matched["editable"], matched[other], n_boot, cfg.seed)}
        for other in ("finetuned", "base")
    }
    write_json(args.metrics, summary)
    write_csv(args.rows, rows)


if __name__ == "__main__":
    run_stage(main)
