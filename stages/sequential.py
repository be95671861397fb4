"""Many edits, each model at its tuned settings: one after another without resetting (retention, drawdown), and
together in batches of each of `sequential.batch_sizes` (each edit's loss summed, at the model's tuned batch lr and
steps). `--metrics` gets the headline figures, `--rows` the sequential curve, `--batch-rows` a row per batch."""

import json
from pathlib import Path

from editable_lm.cli import run_stage, stage_args
from editable_lm.editors.gradient import FineTune
from editable_lm.evaluation import MODELS, batched_edits, held_out, loaded_models, sequential_edits
from editable_lm.metrics import summarize
from editable_lm.storage import read_jsonl, write_csv, write_json


def main() -> None:
    params, args = stage_args(__doc__, "--split", "--tuned", *(f"--{m}" for m in MODELS), "--metrics", "--rows", "--batch-rows")
    tuned = json.loads(Path(args.tuned).read_text())
    cfg, seq = params.evaluate, params.sequential
    pairs = held_out(read_jsonl(Path(args.split, "pairs_test.jsonl")), seq.n_edits, cfg.seed)
    passages = held_out(read_jsonl(Path(args.split, "passages_test.jsonl")), cfg.n_ppl_passages, cfg.seed)
    summary, rows, batch_rows = {}, [], []
    for m in loaded_models({label: getattr(args, label) for label in MODELS}, params.edit, passages, cfg.seq_len):
        choice = tuned[m.label]
        curve = sequential_edits(m.model, m.tokenizer, pairs, FineTune("ft", m.lr(choice["edit_lr"]), cfg.edit_steps),
                                 m.ref, cfg.seq_len, m.label)
        batch = FineTune("batched", m.lr(choice["batch_lr"]), choice["batch_steps"], per_edit=True)
        batches = {size: batched_edits(m.model, m.tokenizer, pairs[: seq.n_batched], batch, m.ref, cfg.seq_len, size)
                   for size in seq.batch_sizes}
        largest = max(seq.batch_sizes)
        summary[m.label] = {
            f"after_{len(pairs)}": {k: curve[-1][k] for k in ("retention", "ppl_drawdown")},
            f"batch_of_{largest}": {k: v for k, v in summarize(batches[largest], ("edit_success", "ppl_drawdown")).items()
                                    if not k.endswith("_median")},
        }
        rows += [{"model": m.label, **row} for row in curve]
        batch_rows += [{"model": m.label, **row} for size in seq.batch_sizes for row in batches[size]]
    write_json(args.metrics, summary)
    write_csv(args.rows, rows)
    write_csv(args.batch_rows, batch_rows)


if __name__ == "__main__":
    run_stage(main)
