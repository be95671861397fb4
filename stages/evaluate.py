"""One edit at a time on held-out test edits: reliability, generality, locality, leakage and fluency, per model and
gradient editor of `editors.names` (ft, ft_kl, until_success), each model editing at its own learning rate (tune
stage); paired differences between models on every metric. `--metrics` gets the headline means, `--details` every summary with its interval and every paired difference."""

import json
from pathlib import Path

from editable_lm import distributed
from editable_lm.cli import run_stage, stage_args
from editable_lm.editors import Resources, build, gradient_names
from editable_lm.evaluation import COMPARED_METRICS, EDIT_METRICS, MODELS, evaluate_edits, held_out, loaded_models, test_sample
from editable_lm.metrics import headline, paired_differences, summarize_by
from editable_lm.storage import read_jsonl, write_csv, write_json

COMPARISONS = [("editable", "finetuned"), ("editable", "base")]
HEADLINE = ("edit_success", "generality", "neighbourhood", "ppl_drawdown", "ppl_post", "fluency")


def main() -> None:
    params, args = stage_args(__doc__, "--split", "--tuned", *(f"--{m}" for m in MODELS), "--metrics", "--details", "--rows")
    cfg, rel = params.evaluate, params.reliability
    tuned = json.loads(Path(args.tuned).read_text())
    pairs, passages, fluency = test_sample(args.split, cfg, rel)
    loc_passages = held_out(read_jsonl(Path(args.split, "passages_val.jsonl")), params.ft_kl.n_loc_passages, cfg.seed)
    details, rows = {"n_edits": len(pairs), "fluency_prompts": list(fluency.prompts)}, []
    for m in loaded_models({label: getattr(args, label) for label in MODELS}, params.edit, passages, cfg.seq_len):
        lr = tuned[m.label]["edit_lr"]
        details["locality_tokens"] = int(m.ref.inputs.batch["attention_mask"].sum())
        resources = Resources(m.model, m.tokenizer, cfg.seq_len, m.lr(lr), loc_passages)
        editors = [build(name, params, None, resources) for name in gradient_names(params)]
        model_rows = evaluate_edits(m.model, m.tokenizer, pairs, editors, m.ref, cfg.seq_len, rel.n_leak_probes, cfg.seed,
                                    m.label, fluency, rel.n_fluency_edits)
        details[m.label] = {
            "edit_lr": lr, "ppl_unedited": m.ref.ppl, "fluency_unedited": fluency(m.model, m.tokenizer),
            **summarize_by(model_rows, "procedure", EDIT_METRICS, rel.n_bootstrap, cfg.seed),
        }
        rows += [{"model": m.label, "edit_lr": lr, **row} for row in model_rows]
    details["differences"] = paired_differences(rows, COMPARISONS, COMPARED_METRICS, rel.n_bootstrap, cfg.seed)
    if distributed.is_main():  # every rank has every row; rank 0 writes
        write_json(args.details, details)
        write_json(args.metrics, {"n_edits": len(pairs), **headline(details, MODELS, HEADLINE, ("editable-finetuned",))})
        write_csv(args.rows, rows)


if __name__ == "__main__":
    run_stage(main)
