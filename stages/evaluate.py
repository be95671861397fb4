"""One edit at a time on held-out edits: reliability, generality, locality and leakage, per model and procedure."""

from pathlib import Path

from editable_lm.cli import run_stage, stage_args
from editable_lm.evaluation import MODELS, EDIT_METRICS, evaluate_edits, held_out, procedures, reference
from editable_lm.metrics import summarize
from editable_lm.models import edit_learning_rates, load_for_editing
from editable_lm.storage import read_jsonl, write_csv, write_json


def main() -> None:
    params, args = stage_args(__doc__, "--split", *(f"--{m}" for m in MODELS), "--metrics", "--rows")
    cfg, rel = params.evaluate, params.reliability
    pairs = held_out(read_jsonl(Path(args.split, "pairs_test.jsonl")), rel.n_edits, cfg.seed)
    passages = held_out(read_jsonl(Path(args.split, "passages_test.jsonl")), cfg.n_ppl_passages, cfg.seed)
    loc_passages = held_out(read_jsonl(Path(args.split, "passages_val.jsonl")), cfg.n_loc_passages, cfg.seed)
    summary, rows = {"n_edits": len(pairs)}, []
    for label in MODELS:
        path = getattr(args, label)
        model, tokenizer, names = load_for_editing(path, params.edit)
        lr = edit_learning_rates(path, names, cfg.edit_lr)
        ref = reference(model, tokenizer, passages, cfg.seq_len)
        summary[label] = {}
        for procedure in procedures(model, tokenizer, loc_passages, lr, cfg.edit_steps, cfg.kl_weight, cfg.seq_len):
            model_rows = evaluate_edits(
                model, tokenizer, pairs, names, procedure, ref, cfg.seq_len, rel.n_leak_probes, cfg.seed, label
            )
            summary[label][procedure.name] = summarize(model_rows, EDIT_METRICS, rel.n_bootstrap, cfg.seed)
            rows += [{"model": label, "procedure": procedure.name, **row} for row in model_rows]
    write_json(args.metrics, summary)
    write_csv(args.rows, rows)


if __name__ == "__main__":
    run_stage(main)
