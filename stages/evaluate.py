"""One edit at a time on held-out test edits: reliability, generality, locality and leakage, per model and
procedure, each model editing at its own learning rate (tune stage); paired differences between models."""

import json
from pathlib import Path

from editable_lm.cli import run_stage, stage_args
from editable_lm.evaluation import MODELS, EDIT_METRICS, evaluate_edits, held_out, loaded_models, procedures
from editable_lm.metrics import paired_differences, summarize_by
from editable_lm.storage import read_jsonl, write_csv, write_json

COMPARISONS = [("editable", "finetuned"), ("editable", "base")]
DIFFERENCES = ("edit_success", "ppl_drawdown", "kl")


def main() -> None:
    params, args = stage_args(__doc__, "--split", "--tuned", *(f"--{m}" for m in MODELS), "--metrics", "--rows")
    cfg, rel = params.evaluate, params.reliability
    tuned = json.loads(Path(args.tuned).read_text())
    pairs = held_out(read_jsonl(Path(args.split, "pairs_test.jsonl")), rel.n_edits, cfg.seed)
    passages = held_out(read_jsonl(Path(args.split, "passages_test.jsonl")), cfg.n_ppl_passages, cfg.seed)
    loc_passages = held_out(read_jsonl(Path(args.split, "passages_val.jsonl")), cfg.n_loc_passages, cfg.seed)
    summary, rows = {"n_edits": len(pairs)}, []
    for m in loaded_models({label: getattr(args, label) for label in MODELS}, params.edit, passages, cfg.seq_len):
        lr = tuned[m.label]["edit_lr"]
        summary["locality_tokens"] = int(m.ref.inputs.batch["attention_mask"].sum())
        procs = procedures(m.model, m.tokenizer, loc_passages, m.lr(lr), cfg.edit_steps, cfg.kl_weight, cfg.seq_len, cfg.max_steps)
        model_rows = evaluate_edits(m.model, m.tokenizer, pairs, procs, m.ref, cfg.seq_len, rel.n_leak_probes, cfg.seed, m.label)
        summary[m.label] = {"edit_lr": lr, "ppl_unedited": m.ref.ppl, **summarize_by(model_rows, "procedure", EDIT_METRICS, rel.n_bootstrap, cfg.seed)}
        rows += [{"model": m.label, "edit_lr": lr, **row} for row in model_rows]
    summary["differences"] = paired_differences(rows, COMPARISONS, DIFFERENCES, rel.n_bootstrap, cfg.seed)
    write_json(args.metrics, summary)
    write_csv(args.rows, rows)


if __name__ == "__main__":
    run_stage(main)
