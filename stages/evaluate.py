"""Apply the same edits to the base, fine-tuned and editable models and measure them."""

import csv
import random
from pathlib import Path

from editable_lm.cli import run_stage, stage_args
from editable_lm.metrics import evaluate_model, summarize
from editable_lm.models import edit_parameter_names, inner_lr_scales, load_checkpoint
from editable_lm.storage import atomic_path, read_jsonl, write_json

MODELS = ("base", "finetuned", "editable")


def main() -> None:
    params, args = stage_args(__doc__, "--split", *(f"--{m}" for m in MODELS), "--metrics", "--rows")
    cfg = params.evaluate
    rng = random.Random(cfg.seed)
    pairs = read_jsonl(Path(args.split, "pairs_test.jsonl"))
    pairs = rng.sample(pairs, min(cfg.n_edits, len(pairs)))
    passages = read_jsonl(Path(args.split, "passages_test.jsonl"))
    passages = rng.sample(passages, min(cfg.n_ppl_passages, len(passages)))
    summary, rows = {"n_edits": len(pairs)}, []
    for label in MODELS:
        path = getattr(args, label)
        model, tokenizer = load_checkpoint(path)
        names = edit_parameter_names(model, params.edit)
        lr = {name: cfg.edit_lr * scale for name, scale in inner_lr_scales(path, names).items()}
        model_rows = evaluate_model(model, tokenizer, pairs, passages, names, lr, cfg.edit_steps, cfg.seq_len, label)
        summary[label] = summarize(model_rows)
        rows += model_rows
    write_json(args.metrics, summary)
    with atomic_path(args.rows) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for label in MODELS:
        print(label, {k: round(v, 4) for k, v in summary[label].items()})


if __name__ == "__main__":
    run_stage(main)
