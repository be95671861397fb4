"""Edit strength sweep (lr x steps): edit success against perplexity drawdown, per model, on validation and on
test edits. Each model's matched setting (the lowest drawdown at edit success >= `tune.target_success`) is chosen
on the validation edits and read on the test edits, with paired differences there. `--metrics` gets the headline
figures, `--details` the grids with intervals, `--rows` one row per (split, model, setting)."""

from pathlib import Path

from editable_lm import distributed
from editable_lm.cli import run_stage, stage_args
from editable_lm.editors.gradient import strength_grid
from editable_lm.evaluation import MODELS, best_setting, evaluate_edits, held_out, loaded_models, without_probes
from editable_lm.metrics import paired_bootstrap, summarize_by
from editable_lm.storage import read_jsonl, write_csv, write_json

KEYS = ("edit_success", "counterfactual_success", "ppl_drawdown", "kl")


def main() -> None:
    params, args = stage_args(__doc__, "--split", *(f"--{m}" for m in MODELS), "--metrics", "--details", "--rows")
    cfg, sweep, n_boot = params.evaluate, params.sweep, params.reliability.n_bootstrap
    target = params.tune.target_success
    grids, rows, matched = {}, [], {}
    for split in ("val", "test"):
        pairs = without_probes(held_out(read_jsonl(Path(args.split, f"pairs_{split}.jsonl")), sweep.n_edits, cfg.seed))
        passages = held_out(read_jsonl(Path(args.split, f"passages_{split}.jsonl")), sweep.n_ppl_passages, cfg.seed)
        for m in loaded_models({label: getattr(args, label) for label in MODELS}, params.edit, passages, cfg.seq_len):
            procs = strength_grid(sweep.lrs, sweep.steps, m.lr)
            edit_rows = evaluate_edits(m.model, m.tokenizer, pairs, procs, m.ref, cfg.seq_len, label=f"{m.label} {split}")
            grids[split, m.label] = summarize_by(edit_rows, "procedure", KEYS, n_boot, cfg.seed)
            if split == "test":
                setting = best_setting(grids["val", m.label], target)
                matched[m.label] = (setting, [r["ppl_drawdown"] for r in edit_rows if r["procedure"] == setting])
            rows += [{"split": split, "model": m.label, "setting": p.name, "lr": lr, "steps": n, **grids[split, m.label][p.name]}
                     for p, (lr, n) in zip(procs, [(lr, n) for lr in sweep.lrs for n in sweep.steps])]
    test = {label: grids["test", label][setting] for label, (setting, _) in matched.items()}
    differences = {
        f"editable-{other}": paired_bootstrap(matched["editable"][1], matched[other][1], n_boot, cfg.seed)
        for other in ("finetuned", "base")
    }
    details = {
        "n_edits": sweep.n_edits, "target_success": target,
        **{label: {"matched": {"setting": setting, "val": grids["val", label][setting], "test": test[label]},
                   "grid": {"val": grids["val", label], "test": grids["test", label]}}
           for label, (setting, _) in matched.items()},
        "differences": {name: {"ppl_drawdown": d} for name, d in differences.items()},
    }
    if distributed.is_main():  # every rank has every row; rank 0 writes
        write_json(args.details, details)
        write_json(args.metrics, {
            **{label: {"matched_success": test[label]["edit_success"], "matched_drawdown": test[label]["ppl_drawdown"]}
               for label in matched},
            "editable-finetuned": {"matched_drawdown": differences["editable-finetuned"]["mean"]},
        })
        write_csv(args.rows, rows)


if __name__ == "__main__":
    run_stage(main)
