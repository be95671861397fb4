"""The closed-form editors (`editors.names`: ROME, MEMIT) on the base model, beside ENN, on the same test edits.

The edit layer is chosen on validation edits with ROME among `rome.layers` (the `tune.target_success` rule: the
lowest drawdown among the layers reaching it, else the best success), a small stand-in for causal tracing;
MEMIT edits `memit.n_layers` blocks ending there. Then each editor is read once on the test edits of `evaluate`
(the same edits, leakage probes, passages and fluency prompts): one edit at a time from the unedited weights, or,
for an editor that edits in batches, all of them in one update. Per-edit editors are paired with ENN (the editable
model's `ft` rows of `--enn-rows`) on every metric. `--metrics` gets the headline, `--details` the summaries,
intervals and the layer grid, `--rows` a row per edit (or batch)."""

from pathlib import Path

from editable_lm.cli import run_stage, stage_args
from editable_lm.editors import build, stats_layers
from editable_lm.evaluation import (
    COMPARED_METRICS, EDIT_METRICS, batched_grid, best_setting, evaluate_edits, fluency_prompts, held_out, reference,
    test_sample, without_probes,
)
from editable_lm.layer_stats import load_moments
from editable_lm.metrics import paired_differences, summarize
from editable_lm.models import load_for_editing
from editable_lm.split_forward import SplitForward
from editable_lm.storage import read_csv, read_jsonl, write_csv, write_json

TUNE_KEYS = ("edit_success", "ppl_drawdown", "kl", "top1_agreement")
HEADLINE = ("edit_success", "counterfactual_success", "generality", "neighbourhood", "ppl_drawdown", "fluency",
            "sec_per_edit")
ENN = ("editable", "ft")  # the model and procedure of `evaluate` the editors are paired with


def main() -> None:
    params, args = stage_args(__doc__, "--split", "--base", "--stats", "--enn-rows", "--metrics", "--details", "--rows")
    cfg, rel, tune, ed = params.evaluate, params.reliability, params.tune, params.editors
    lm, tokenizer, _ = load_for_editing(args.base, params.edit)
    moments = load_moments(args.stats, stats_layers(params))
    val_passages = held_out(read_jsonl(Path(args.split, "passages_val.jsonl")), tune.n_ppl_passages + ed.n_contexts, cfg.seed)
    contexts = fluency_prompts(val_passages[tune.n_ppl_passages :], ed.context_words)

    def split_for(editor, passages):
        split = SplitForward(lm, editor.weight_names(lm))
        return split, reference(split, tokenizer, passages, cfg.seq_len)

    val_pairs = without_probes(held_out(read_jsonl(Path(args.split, "pairs_val.jsonl")), ed.n_tune_edits, cfg.seed))
    grid = {}
    for layer in params.rome.layers:
        rome = build("rome", params, layer, moments, contexts)
        split, ref = split_for(rome, val_passages[: tune.n_ppl_passages])
        rows = evaluate_edits(split, tokenizer, val_pairs, [rome], ref, cfg.seq_len, label=f"rome layer {layer} (validation)")
        grid[f"layer={layer}"] = summarize(rows, TUNE_KEYS)
    layer = int(best_setting(grid, tune.target_success).split("=")[1])
    print(f"edit layer {layer}: validation edit success {grid[f'layer={layer}']['edit_success']:.2f}, "
          f"drawdown {grid[f'layer={layer}']['ppl_drawdown']:.3f}")

    pairs, passages, fluency = test_sample(args.split, cfg, rel)
    details = {"n_edits": len(pairs), "layer": layer, "layer_grid": grid, "contexts": list(contexts)}
    rows, per_edit = [], []
    for name in ed.names:
        editor = build(name, params, layer, moments, contexts)
        split, ref = split_for(editor, passages)
        if editor.batched:
            editor_rows = batched_grid(split, tokenizer, pairs, [editor], ref, cfg.seq_len, len(pairs))[editor.name]
            details[name] = summarize(editor_rows, ("edit_success", "ppl_drawdown", "ppl_post", "kl", "seconds"))
        else:
            editor_rows = evaluate_edits(split, tokenizer, pairs, [editor], ref, cfg.seq_len, rel.n_leak_probes, cfg.seed,
                                         name, fluency, rel.n_fluency_edits)
            details[name] = summarize(editor_rows, EDIT_METRICS, rel.n_bootstrap, cfg.seed)
            per_edit += [{**row, "model": name, "procedure": "edit"} for row in editor_rows]
        details[name]["weights"] = editor.weight_names(lm)
        rows += [{"editor": name, "model": "base", **row} for row in editor_rows]
    enn = [{**row, "model": "enn", "procedure": "edit"} for row in read_csv(args.enn_rows)
           if (row["model"], row["procedure"]) == ENN]
    comparisons = [(row_editor, "enn") for row_editor in dict.fromkeys(r["model"] for r in per_edit)]
    details["differences"] = paired_differences(per_edit + enn, comparisons, COMPARED_METRICS, rel.n_bootstrap, cfg.seed)
    write_json(args.details, details)
    headline = {"n_edits": len(pairs), "layer": layer}
    for name in ed.names:
        headline[name] = {key: details[name][key] for key in (*HEADLINE, "seconds") if key in details[name]}
    for comparison, by_procedure in details["differences"].items():
        headline[comparison] = {key: d["mean"] for key, d in by_procedure["edit"].items() if key in HEADLINE}
    write_json(args.metrics, headline)
    write_csv(args.rows, rows)


if __name__ == "__main__":
    run_stage(main)
