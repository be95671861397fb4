"""Each model's edit learning rate, chosen on validation edits (as MEND tunes its fine-tuning baseline).

Among `sweep.lrs` at `evaluate.edit_steps` steps: the lowest perplexity drawdown among the rates
that reach `tune.target_success`, else the highest edit success. The test edits are not read here.
"""

from pathlib import Path

from editable_lm.cli import run_stage, stage_args
from editable_lm.evaluation import MODELS, best_setting, evaluate_edits, held_out, loaded_models, strength_grid, without_probes
from editable_lm.metrics import summarize_by
from editable_lm.storage import read_jsonl, write_json

KEYS = ("edit_success", "ppl_drawdown", "kl", "top1_agreement")


def main() -> None:
    params, args = stage_args(__doc__, "--split", *(f"--{m}" for m in MODELS), "--out")
    cfg, tune = params.evaluate, params.tune
    pairs = without_probes(held_out(read_jsonl(Path(args.split, "pairs_val.jsonl")), tune.n_edits, cfg.seed))
    passages = held_out(read_jsonl(Path(args.split, "passages_val.jsonl")), tune.n_ppl_passages, cfg.seed)
    chosen = {"n_edits": len(pairs)}
    for m in loaded_models({label: getattr(args, label) for label in MODELS}, params.edit, passages, cfg.seq_len):
        procs = strength_grid(params.sweep.lrs, [cfg.edit_steps], m.lr)
        grid = summarize_by(evaluate_edits(m.model, m.tokenizer, pairs, procs, m.ref, cfg.seq_len, label=m.label), "procedure", KEYS)
        best = best_setting(grid, tune.target_success)
        lr = params.sweep.lrs[[p.name for p in procs].index(best)]
        chosen[m.label] = {"edit_lr": lr, **grid[best], "grid": grid}
        print(f"{m.label}: edit lr {lr:g} (validation edit success {grid[best]['edit_success']:.2f}, "
              f"drawdown {grid[best]['ppl_drawdown']:.3f})")
    write_json(args.out, chosen)


if __name__ == "__main__":
    run_stage(main)
