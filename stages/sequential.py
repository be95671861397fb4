"""Many edits, each model at its tuned edit learning rate: one after another without resetting (retention,
drawdown), and in batches."""

import json
from pathlib import Path

from editable_lm.cli import run_stage, stage_args
from editable_lm.evaluation import MODELS, Procedure, batched_edits, held_out, loaded_models, sequential_edits
from editable_lm.metrics import summarize
from editable_lm.storage import read_jsonl, write_csv, write_json


def main() -> None:
    params, args = stage_args(__doc__, "--split", "--tuned", *(f"--{m}" for m in MODELS), "--metrics", "--rows", "--batch-rows")
    tuned = json.loads(Path(args.tuned).read_text())
    cfg, seq = params.evaluate, params.sequential
    pairs = held_out(read_jsonl(Path(args.split, "pairs_test.jsonl")), seq.n_edits, cfg.seed)
    passages = held_out(read_jsonl(Path(args.split, "passages_test.jsonl")), cfg.n_ppl_passages, cfg.seed)
    summary, rows, batch_rows = {"n_edits": len(pairs), "batch_size": seq.batch_size, "n_batches": seq.n_batches}, [], []
    for m in loaded_models({label: getattr(args, label) for label in MODELS}, params.edit, passages, cfg.seq_len):
        procedure = Procedure("ft", m.lr(tuned[m.label]["edit_lr"]), cfg.edit_steps)
        curve = sequential_edits(m.model, m.tokenizer, pairs, procedure, m.ref, cfg.seq_len, m.label)
        batched = pairs[: seq.batch_size * seq.n_batches]
        batches = batched_edits(m.model, m.tokenizer, batched, procedure, m.ref, cfg.seq_len, seq.batch_size)
        summary[m.label] = {
            "sequential": {k: curve[-1][k] for k in ("retention", "ppl_drawdown", "kl", "top1_agreement")},
            "batched": summarize(batches, ("edit_success", "ppl_drawdown", "kl", "top1_agreement")),
        }
        rows += [{"model": m.label, **row} for row in curve]
        batch_rows += [{"model": m.label, **row} for row in batches]
    write_json(args.metrics, summary)
    write_csv(args.rows, rows)
    write_csv(args.batch_rows, batch_rows)


if __name__ == "__main__":
    run_stage(main)
