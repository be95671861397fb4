"""Each model's edit settings, chosen on validation edits (as MEND tunes its fine-tuning baseline): the learning rate
every gradient editor (`ft`, `ft_kl`, `until_success`) edits that model at.

Single edits: among `sweep.lrs` at `evaluate.edit_steps` steps, the lowest perplexity drawdown among the rates
that reach `tune.target_success`, else the highest edit success. Batched edits (each edit's loss summed): the
same rule among `sweep.lrs` x `tune.batch_steps` on batches of `tune.batch_size`. The test edits are not read here.
`--out` gets the choices, `--grid` every setting's validation figures and which was chosen.
"""

from pathlib import Path

from editable_lm import distributed
from editable_lm.cli import run_stage, stage_args
from editable_lm.editors.gradient import setting_of, strength_grid
from editable_lm.evaluation import MODELS, batched_grid, best_setting, evaluate_edits, held_out, loaded_models, without_probes
from editable_lm.metrics import summarize, summarize_by
from editable_lm.storage import read_jsonl, write_json

KEYS = ("edit_success", "ppl_drawdown", "kl", "top1_agreement")


def main() -> None:
    params, args = stage_args(__doc__, "--split", *(f"--{m}" for m in MODELS), "--out", "--grid")
    cfg, tune = params.evaluate, params.tune
    pairs = without_probes(held_out(read_jsonl(Path(args.split, "pairs_val.jsonl")), tune.n_edits, cfg.seed))
    passages = held_out(read_jsonl(Path(args.split, "passages_val.jsonl")), tune.n_ppl_passages, cfg.seed)
    chosen, grids = {"n_edits": len(pairs)}, {}
    for m in loaded_models({label: getattr(args, label) for label in MODELS}, params.edit, passages, cfg.seq_len):
        procs = strength_grid(params.sweep.lrs, [cfg.edit_steps], m.lr)
        grid = summarize_by(evaluate_edits(m.model, m.tokenizer, pairs, procs, m.ref, cfg.seq_len, label=m.label), "procedure", KEYS)
        best = best_setting(grid, tune.target_success)
        batch_procs = strength_grid(params.sweep.lrs, tune.batch_steps, m.lr, per_edit=True)
        batch_rows = batched_grid(m.model, m.tokenizer, pairs[: tune.n_batch_edits], batch_procs, m.ref, cfg.seq_len,
                                  tune.batch_size)
        batch_grid = {name: summarize(rows, KEYS) for name, rows in batch_rows.items()}
        batch_best = best_setting(batch_grid, tune.target_success)
        batch = setting_of(batch_best)
        chosen[m.label] = {"edit_lr": setting_of(best)["lr"], "batch_lr": batch["lr"], "batch_steps": batch["steps"]}
        grids[m.label] = {"single": {"chosen": best, "grid": grid}, "batched": {"chosen": batch_best, "grid": batch_grid}}
        print(f"{m.label}: edit lr {chosen[m.label]['edit_lr']:g} (validation edit success {grid[best]['edit_success']:.2f}, "
              f"drawdown {grid[best]['ppl_drawdown']:.3f}); batches of {tune.batch_size}: lr {batch['lr']:g} x "
              f"{batch['steps']} steps (success {batch_grid[batch_best]['edit_success']:.2f}, "
              f"drawdown {batch_grid[batch_best]['ppl_drawdown']:.3f})")
    if distributed.is_main():  # every rank has every row; rank 0 writes
        write_json(args.grid, grids)
        write_json(args.out, chosen)


if __name__ == "__main__":
    run_stage(main)
