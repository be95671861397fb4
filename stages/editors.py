"""The base-model editors of `editors.names` (ROME, MEMIT, MEND) beside ENN, on the same test edits.

Each editor's setting is chosen on validation edits by the `tune.target_success` rule (the lowest drawdown among
the settings reaching it, else the best success): ROME's edit layer among `rome.layers` (a small stand-in for
causal tracing) and its value optimisation's steps among `rome.steps`, on `editors.n_tune_edits` edits one at a
time; MEMIT's number of blocks ending at that layer (its values optimised with those steps) among
`memit.n_layers` and its lambda among `memit.lambdas`, on one update of as many validation edits as the test batch
(`reliability.n_edits`: how much an update disturbs grows with its edits); MEND (trained by stage `mend`, `--mend`)
has no setting left, and its validation row is a check. ROME and MEMIT edit the base model; MEND the model its
network was trained for (`mend.model`: the base or the fine-tuned model). Then each editor is read once on the test edits of `evaluate`
(the same edits, leakage probes, passages and fluency prompts): one edit at a time from the unedited weights, or,
for an editor that edits in batches, all of them in one update. Per-edit editors are paired on every metric with ENN
(the editable model's `ft` rows of `--enn-rows`) and with FT of the model it edits (its `ft` rows; in --details only). `--metrics` gets the headline, `--details` the summaries,
intervals and the layer grid, `--rows` a row per edit (or batch)."""

from pathlib import Path

from editable_lm import distributed
from editable_lm.cli import run_stage, stage_args
from editable_lm.editors import (
    Resources, build, base_editor_names, edited_model, key_contexts, setting_name, settings, stats_layers,
)
from editable_lm.evaluation import (
    COMPARED_METRICS, EDIT_METRICS, batched_grid, best_setting, evaluate_edits, held_out, reference,
    test_sample, without_probes,
)
from editable_lm.layer_stats import load_moments
from editable_lm.mend import EDITOR_FILE
from editable_lm.metrics import paired_differences, summarize
from editable_lm.models import load_for_editing
from editable_lm.split_forward import SplitForward
from editable_lm.storage import read_csv, read_jsonl, write_csv, write_json

TUNE_KEYS = ("edit_success", "ppl_drawdown", "kl", "top1_agreement")
# What `dvc metrics show` gets (the headline figures only); the rest is in --details.
HEADLINE = ("edit_success", "generality", "neighbourhood", "ppl_drawdown", "fluency")
PAIRED = ("edit_success", "ppl_drawdown")
# The `ft` rows of `evaluate` each per-edit editor is paired with, by label: ENN's, and FT of the model it edits
BASELINES = {"enn": "editable", "ft": None}


def main() -> None:
    params, args = stage_args(__doc__, "--split", "--base", "--finetuned", "--stats", "--mend", "--enn-rows", "--metrics",
                              "--details", "--rows")
    cfg, rel, tune, ed = params.evaluate, params.reliability, params.tune, params.editors
    paths = {"base": args.base, "finetuned": args.finetuned}
    models = {label: load_for_editing(paths[label], params.edit) for label in dict.fromkeys(
        edited_model(name, params) for name in base_editor_names(params))}  # label: (model, tokenizer, edit weights)
    moments = load_moments(args.stats, stats_layers(params))
    all_val_passages = read_jsonl(Path(args.split, "passages_val.jsonl"))
    val_passages, contexts = held_out(all_val_passages, tune.n_ppl_passages, cfg.seed), key_contexts(all_val_passages, params)
    resources = {label: Resources(split=SplitForward(lm, edit_names), tokenizer=tokenizer, max_len=cfg.seq_len,
                                  moments=moments, contexts=contexts, mend=str(Path(args.mend, EDITOR_FILE)))
                 for label, (lm, tokenizer, edit_names) in models.items()}

    def split_for(editor, label, passages):
        lm, tokenizer, _ = models[label]
        split = SplitForward(lm, editor.weight_names(lm))
        return split, reference(split, tokenizer, passages, cfg.seq_len)

    def measure(editor, split, ref, pairs, label, tokenizer, test=False):
        """A row per edit (one at a time), or one row for all `pairs` in one update (a batched editor); leakage
        and fluency on test edits only."""
        if editor.batched:
            return batched_grid(split, tokenizer, pairs, [editor], ref, cfg.seq_len, len(pairs))[editor.name]
        return evaluate_edits(split, tokenizer, pairs, [editor], ref, cfg.seq_len, rel.n_leak_probes if test else 0,
                              cfg.seed, label, fluency if test else None, rel.n_fluency_edits if test else 0)

    all_val_pairs = without_probes(held_out(read_jsonl(Path(args.split, "pairs_val.jsonl")), rel.n_edits, cfg.seed))
    pairs, passages, fluency = test_sample(args.split, cfg, rel)
    details, rows, rome = {"n_edits": len(pairs), "contexts": list(contexts)}, [], None  # rome: ROME's chosen setting
    evaluated, differences = read_csv(args.enn_rows), {}
    for name in base_editor_names(params):
        model = edited_model(name, params)
        tokenizer = models[model][1]
        grid = {}  # validation: one edit at a time, or a batch of the test batch's size in one update
        for setting in settings(name, params, rome):
            editor = build(name, params, setting, resources[model])
            val_pairs = all_val_pairs if editor.batched else all_val_pairs[: ed.n_tune_edits]
            split, ref = split_for(editor, model, val_passages)
            grid[setting_name(setting)] = summarize(measure(editor, split, ref, val_pairs, f"{name} {setting_name(setting)} (validation)",
                                                            tokenizer), TUNE_KEYS)
        chosen = best_setting(grid, tune.target_success)
        setting = settings(name, params, rome)[list(grid).index(chosen)]
        rome = setting if "layer" in setting and rome is None else rome
        print(f"{name}: {chosen} (validation edit success {grid[chosen]['edit_success']:.2f}, "
              f"drawdown {grid[chosen]['ppl_drawdown']:.3f})")
        editor = build(name, params, setting, resources[model])
        split, ref = split_for(editor, model, passages)
        editor_rows = measure(editor, split, ref, pairs, name, tokenizer, test=True)
        keys = ("edit_success", "ppl_drawdown", "ppl_post", "kl", "seconds") if editor.batched else EDIT_METRICS
        details[name] = {"setting": setting, "model": model, "grid": grid, "weights": editor.weight_names(models[model][0]),
                         **summarize(editor_rows, keys, rel.n_bootstrap, cfg.seed)}
        if not editor.batched:
            mine = [{**row, "model": name, "procedure": "edit"} for row in editor_rows]
            baselines = [{**row, "model": label, "procedure": "edit"} for label, of in BASELINES.items() for row in evaluated
                         if (row["model"], row["procedure"]) == (of or model, "ft")]
            differences |= paired_differences(mine + baselines, [(name, label) for label in BASELINES], COMPARED_METRICS,
                                              rel.n_bootstrap, cfg.seed)
        rows += [{"editor": name, "model": model, **row} for row in editor_rows]
    details["layer"], details["differences"] = rome and rome["layer"], differences
    if distributed.is_main():  # every rank has every row; rank 0 writes
        write_json(args.details, details)
        headline = {name: {key: details[name][key] for key in HEADLINE if key in details[name]} for name in base_editor_names(params)}
        for comparison, by_procedure in details["differences"].items():
            if comparison.endswith("-enn"):  # the FT pairings stay in --details
                headline[comparison] = {key: d["mean"] for key, d in by_procedure["edit"].items() if key in PAIRED}
        write_json(args.metrics, headline)
        write_csv(args.rows, rows)


if __name__ == "__main__":
    run_stage(main)
