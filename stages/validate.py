"""The levers' measurement (README, "Editable without the cost"): one edit at a time on validation edits, never the
test edits, with `ft` at each model's tuned lr (tune stage): each model's unedited perplexity and fluency on
validation passages, edit success, generality, leakage and post-edit perplexity, and the paired differences
editable - finetuned. A pilot is `dvc exp run --queue validate -S ...`; the frontier figure reads these files.
`--metrics` gets the headline means, `--details` every summary with its interval and every paired difference."""

import json
from pathlib import Path

from editable_lm import distributed
from editable_lm.cli import run_stage, stage_args
from editable_lm.editors import Resources, build
from editable_lm.errors import EditLMError
from editable_lm.evaluation import COMPARED_METRICS, EDIT_METRICS, MODELS, Fluency, evaluate_edits, fluency_prompts, held_out
from editable_lm.evaluation import loaded_models
from editable_lm.metrics import headline, paired_differences, summarize_by
from editable_lm.storage import read_jsonl, write_json

HEADLINE = ("edit_success", "generality", "leakage", "ppl_drawdown", "ppl_post")


def main() -> None:
    params, args = stage_args(__doc__, "--split", "--tuned", *(f"--{m}" for m in MODELS), "--metrics", "--details")
    cfg, rel, val = params.evaluate, params.reliability, params.validation
    tuned = json.loads(Path(args.tuned).read_text())
    pairs = held_out(read_jsonl(Path(args.split, "pairs_val.jsonl")), val.n_edits, cfg.seed)
    passages = held_out(read_jsonl(Path(args.split, "passages_val.jsonl")), val.n_ppl_passages + rel.n_fluency_prompts,
                        cfg.seed)
    fluency = Fluency(fluency_prompts(passages[val.n_ppl_passages :]), rel.fluency_tokens)
    if len(fluency.prompts) < rel.n_fluency_prompts:  # the split checks each sample alone, not their sum
        raise EditLMError(f"reliability.n_fluency_prompts: {rel.n_fluency_prompts} prompts wanted beyond the "
                          f"{val.n_ppl_passages} validation passages of validation.n_ppl_passages, but the validation "
                          f"split has {len(passages)} passages")
    details, rows = {"n_edits": len(pairs), "fluency_prompts": list(fluency.prompts)}, []
    for m in loaded_models({label: getattr(args, label) for label in MODELS}, params.edit, passages[: val.n_ppl_passages],
                           cfg.seq_len):
        lr = tuned[m.label]["edit_lr"]
        details["locality_tokens"] = int(m.ref.inputs.batch["attention_mask"].sum())
        editor = build("ft", params, None, Resources(m.model, m.tokenizer, cfg.seq_len, m.lr(lr)))
        model_rows = evaluate_edits(m.model, m.tokenizer, pairs, [editor], m.ref, cfg.seq_len, rel.n_leak_probes, cfg.seed,
                                    m.label)
        details[m.label] = {
            "edit_lr": lr, "ppl_unedited": m.ref.ppl, "fluency_unedited": fluency(m.model, m.tokenizer),
            **summarize_by(model_rows, "procedure", EDIT_METRICS, rel.n_bootstrap, cfg.seed),
        }
        rows += [{"model": m.label, "edit_lr": lr, **row} for row in model_rows]
    details["differences"] = paired_differences(rows, [("editable", "finetuned")], COMPARED_METRICS, rel.n_bootstrap,
                                                cfg.seed)
    if distributed.is_main():  # every rank has every row; rank 0 writes
        write_json(args.details, details)
        write_json(args.metrics, {"n_edits": len(pairs), **headline(details, MODELS, HEADLINE, ("editable-finetuned",))})


if __name__ == "__main__":
    run_stage(main)
