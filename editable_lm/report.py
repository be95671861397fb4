"""The evaluation as figures (PNG) and a Markdown report, rebuilt by the pipeline."""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed
import matplotlib.pyplot as plt  # noqa: E402

from editable_lm.evaluation import MODELS  # noqa: E402
from editable_lm.storage import atomic_path  # noqa: E402

RATES = ("edit_success", "counterfactual_success", "generality", "neighbourhood", "top1_agreement")
TABLE = RATES + ("ppl_drawdown", "ppl_drawdown_median", "ppl_post", "kl", "fluency", "steps_to_success", "sec_per_edit")

# Each compared metric: what it is called here and in CounterFact/ROME, and whether higher is better.
METRICS = {
    "edit_success": ("edit success", "", True),
    "counterfactual_success": ("counterfactual success", "efficacy", True),
    "generality": ("generality", "paraphrase", True),
    "neighbourhood": ("neighbourhood (1 − leakage)", "", True),
    "ppl_drawdown": ("perplexity drawdown", "", False),
    "ppl_post": ("post-edit perplexity", "", False),
    "kl": ("KL(pre || post)", "", False),
    "top1_agreement": ("top-1 agreement", "", True),
    "fluency": ("fluency (n-gram entropy)", "", True),
}
PROCEDURE_NAMES = {"ft": "fixed-step edit", "ft_kl": "fixed-step edit with KL", "until_success": "edit until it holds"}

DRAWDOWN_FLOOR, DRAWDOWN_CLIP = 1e-3, 1e2  # the tradeoff figure's axis: medians outside are counted, not plotted


def with_interval(metrics: dict, key: str) -> str:
    """`mean [low, high]` for a metric, `-` where it is missing."""
    if key not in metrics:
        return "-"
    if f"{key}_low" not in metrics:
        return f"{metrics[key]:.3g}"
    return f"{metrics[key]:.3g} [{metrics[f'{key}_low']:.3g}, {metrics[f'{key}_high']:.3g}]"


def procedures_of(model_metrics: dict) -> dict[str, dict]:
    """The per-procedure summaries of one model in the evaluation details (other keys, e.g. edit_lr, are scalars)."""
    return {name: value for name, value in model_metrics.items() if isinstance(value, dict)}


def difference(d: dict, percent: bool = False) -> str:
    """`mean [low, high]` of a paired difference."""
    f = (lambda x: f"{x:+.0%}") if percent else (lambda x: f"{x:+.3g}")
    return f"{f(d['mean'])} [{f(d['low'])}, {f(d['high'])}]"


def direction(d: dict, higher_is_better: bool) -> str:
    """What a paired interval says about model a against model b: wins, loses, or the interval holds 0."""
    low, high = (d["low"], d["high"]) if higher_is_better else (-d["high"], -d["low"])
    return "wins" if low > 0 else "loses" if high < 0 else "no clear difference"


def metric_sentence(key: str, a: dict, b: dict, d: dict, names: tuple[str, str]) -> str:
    """One verdict sentence: both means, the paired interval and what it says."""
    label, field, higher = METRICS[key]
    field = f" ({field})" if field else ""
    outcome = direction(d, higher)
    said = {"wins": f"the {names[0]} model is better", "loses": f"the {names[0]} model is worse",
            "no clear difference": "the interval holds zero"}[outcome]
    return (f"- **{label}{field}**: {a[key]:.3g} against {b[key]:.3g}, paired {difference(d)} over {d['n']} edits: "
            f"{said}.")


def outcomes(evaluate: dict, procedure: str, comparison: str = "editable-finetuned") -> dict[str, str]:
    """metric -> wins / loses / no clear difference, for one comparison and procedure."""
    diffs = evaluate["differences"][comparison][procedure]
    return {key: direction(diffs[key], METRICS[key][2]) for key in METRICS if key in diffs}


def verdict(evaluate: dict, sweep: dict) -> str:
    """The study's question answered from the paired intervals: a sentence per metric, wins and losses alike."""
    lines = [f"**Verdict** (editable − fine-tuned, paired over the same {evaluate['n_edits']} held-out test edits, "
             "95% bootstrap intervals; each model edits at the rate tuned for it on validation edits)."]
    for procedure in procedures_of(evaluate["editable"]):
        diffs = evaluate["differences"]["editable-finetuned"].get(procedure)
        if not diffs:
            continue
        a, b = evaluate["editable"][procedure], evaluate["finetuned"][procedure]
        name = PROCEDURE_NAMES.get(procedure, procedure)
        lines += ["", f"{name[:1].upper()}{name[1:]} (`{procedure}`):", ""]
        lines += [metric_sentence(key, a, b, diffs[key], ("editable", "fine-tuned")) for key in METRICS if key in diffs]
    unedited = "Before any edit, perplexity on the locality tokens is " + ", ".join(
        f"{finite(evaluate[m]['ppl_unedited'])} ({m})" for m in MODELS)
    if all("fluency_unedited" in evaluate[m] for m in MODELS):
        unedited += " and fluency " + ", ".join(f"{evaluate[m]['fluency_unedited']:.3g} ({m})" for m in MODELS)
    lines += ["", unedited + "."]
    matched = sweep["differences"]["editable-finetuned"]["ppl_drawdown"]
    lines += ["", f"At matched success (the sweep's setting per model, chosen on {sweep['n_edits']} validation edits as the "
              f"lowest drawdown with success >= {sweep['target_success']:g}, read on {sweep['n_edits']} test edits): "
              f"drawdown {sweep['editable']['matched']['test']['ppl_drawdown']:.3g} (editable, success "
              f"{sweep['editable']['matched']['test']['edit_success']:.0%}) against "
              f"{sweep['finetuned']['matched']['test']['ppl_drawdown']:.3g} (fine-tuned, success "
              f"{sweep['finetuned']['matched']['test']['edit_success']:.0%}), paired {difference(matched)}."]
    lines += ["", selectively(outcomes(evaluate, "ft"))]
    return "\n".join(lines)


def selectively(outcome: dict[str, str]) -> str:
    """What "selectively editable" does and does not mean on this evidence."""
    def said(keys):
        return ", ".join(f"{METRICS[k][0]} ({outcome[k]})" for k in keys if k in outcome) or "not measured"

    return ("What \"selectively\" means here: on text unrelated to the edit the editable model's fixed-step edits "
            f"compare with the fine-tuned model's as follows: {said(('ppl_drawdown', 'ppl_post', 'kl', 'top1_agreement'))}; "
            f"on sentences about other people: {said(('neighbourhood',))}; on other sentences about the same person: "
            f"{said(('generality',))}; the edit itself: {said(('edit_success', 'counterfactual_success'))}; "
            f"generated text: {said(('fluency',))}. A win on drawdown is relative to each model's own perplexity; "
            "the post-edit perplexity row says which model is the better language model after the edit.")


def differences_table(evaluate: dict) -> str:
    """Paired differences between models over the same edits, per procedure and metric."""
    lines = ["| comparison | procedure | metric | mean [95% CI] | median | edits | says |", "|---|---|---|---|---|---|---|"]
    for comparison, per_procedure in evaluate["differences"].items():
        for procedure, metrics in per_procedure.items():
            for key, d in metrics.items():
                outcome = direction(d, METRICS[key][2]) if key in METRICS else ""
                lines.append(f"| {comparison} | {procedure} | {key} | {difference(d)} | {d['median']:+.3g} | {d['n']} | {outcome} |")
    return "\n".join(lines)


def reliability_table(evaluate: dict) -> str:
    """Models x procedures x metrics, each with its 95% bootstrap interval."""
    lines = ["| model | procedure | " + " | ".join(TABLE) + " |", "|---|---|" + "---|" * len(TABLE)]
    for model in MODELS:
        for procedure, metrics in procedures_of(evaluate[model]).items():
            lines.append(f"| {model} | {procedure} | " + " | ".join(with_interval(metrics, k) for k in TABLE) + " |")
    return "\n".join(lines)


FIELD_COLUMNS = (("edit success", "edit_success"), ("efficacy", "counterfactual_success"), ("paraphrase", "generality"),
                 ("neighbourhood", "neighbourhood"), ("drawdown", "ppl_drawdown"), ("fluency", "fluency"),
                 ("s / edit", "sec_per_edit"))


def field_table(rows: list[tuple[str, dict]]) -> str:
    """The papers' shape: a row per (label, summary), the field's column names, each mean with its interval."""
    lines = ["| | " + " | ".join(name for name, _ in FIELD_COLUMNS) + " |", "|---|" + "---|" * len(FIELD_COLUMNS)]
    for label, metrics in rows:
        lines.append(f"| {label} | " + " | ".join(with_interval(metrics, key) for _, key in FIELD_COLUMNS) + " |")
    return "\n".join(lines)


def editor_rows(evaluate: dict, editors: dict | None) -> list[tuple[str, dict]]:
    """FT (of the base model, which the later editors edit, and of the fine-tuned model), FT+KL (the fine-tuned
    model's fixed-step edits), ENN (the editable model's), then each editor of the base model; a batched editor's
    seconds are per edit of its one update."""
    rows = [("FT (base model)", evaluate["base"]["ft"]), ("FT (fine-tuned model)", evaluate["finetuned"]["ft"])]
    if "ft_kl" in evaluate["finetuned"]:
        rows.append(("FT+KL (fine-tuned model)", evaluate["finetuned"]["ft_kl"]))
    rows.append(("ENN (editable model)", evaluate["editable"]["ft"]))
    for name, summary in (editors or {}).items():
        if isinstance(summary, dict) and "weights" in summary:
            if "seconds" in summary:  # one update for all edits
                summary = {**summary, "sec_per_edit": summary["seconds"] / editors["n_edits"]}
                label = f"{name.upper()} (base model, {setting_label(summary['setting'])}; all {editors['n_edits']} edits in one update)"
            else:
                label = f"{name.upper()} (base model" + (f", {setting_label(summary['setting'])})" if summary["setting"] else ")")
            rows.append((label, summary))
    return rows


def plot_reliability(evaluate: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(MODELS)
    for i, model in enumerate(MODELS):
        metrics = evaluate[model]["ft"]
        keys = [k for k in RATES if k in metrics and f"{k}_low" in metrics]
        x = [RATES.index(k) + i * width for k in keys]
        means = [metrics[k] for k in keys]
        errors = [[metrics[k] - metrics[f"{k}_low"] for k in keys], [metrics[f"{k}_high"] - metrics[k] for k in keys]]
        ax.bar(x, means, width, yerr=errors, capsize=3, label=model)
    ax.set_xticks([i + width for i in range(len(RATES))], RATES, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"One edit at a time (FT edit, {evaluate['n_edits']} held-out edits, 95% bootstrap CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(sweep_rows: list[dict], chosen: dict[str, str], path: Path) -> None:
    """Per model, edit success against the median drawdown on test edits, one line per step count (points: lrs).

    The drawdown axis is logarithmic between DRAWDOWN_FLOOR and DRAWDOWN_CLIP: a median at or below the floor
    (untouched, or better than before) is drawn on the floor as a triangle; medians above the clip are counted
    in the panel's title, not drawn. A star marks the setting chosen on validation edits (`chosen`).
    """
    rows = [r for r in sweep_rows if r.get("split", "test") == "test"]
    fig, axes = plt.subplots(1, len(MODELS), figsize=(4.2 * len(MODELS), 3.8), sharey=True)
    for ax, model in zip(axes, MODELS):
        mine = [r for r in rows if r["model"] == model]
        beyond = 0
        for steps in sorted({int(r["steps"]) for r in mine}):
            line = sorted((r for r in mine if int(r["steps"]) == steps), key=lambda r: r["lr"])
            shown = [r for r in line if r["ppl_drawdown_median"] <= DRAWDOWN_CLIP]
            beyond += len(line) - len(shown)
            x = [max(r["ppl_drawdown_median"], DRAWDOWN_FLOOR) for r in shown]
            (drawn,) = ax.plot(x, [r["edit_success"] for r in shown], "-", label=f"{steps} step{'s' * (steps > 1)}")
            for r, xi in zip(shown, x):
                floor = r["ppl_drawdown_median"] <= DRAWDOWN_FLOOR
                ax.plot(xi, r["edit_success"], "v" if floor else "o", color=drawn.get_color())
                ax.annotate(f"{r['lr']:g}", (xi, r["edit_success"]), fontsize=7, xytext=(3, -9), textcoords="offset points")
                if r["setting"] == chosen.get(model):
                    ax.plot(xi, r["edit_success"], "*", color="black", markersize=13, zorder=5)
        ax.set_xscale("log")
        ax.set_xlim(DRAWDOWN_FLOOR / 1.5, DRAWDOWN_CLIP * 1.5)
        ax.set_ylim(-0.03, 1.05)
        ax.set_xlabel("median perplexity drawdown (log)")
        ax.set_title(f"{model}" + (f" ({beyond} setting{'s' * (beyond > 1)} > {DRAWDOWN_CLIP:g} not shown)" if beyond else ""),
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("edit success")
    fig.suptitle(f"Edit strength on test edits (labels: lr; ▼: median ≤ {DRAWDOWN_FLOOR:g}; ★: chosen on validation)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sequential(sequential: list[dict], path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for model in MODELS:
        rows = [r for r in sequential if r["model"] == model]
        left.plot([r["n_edits"] for r in rows], [r["retention"] for r in rows], "o-", label=model)
        right.plot([r["n_edits"] for r in rows], [r["ppl_drawdown"] for r in rows], "o-", label=model)
    for ax, label in ((left, "retention (success on all edits so far)"), (right, "perplexity drawdown")):
        ax.set_xscale("log")
        ax.set_xlabel("edits applied in sequence")
        ax.set_ylabel(label)
        ax.legend()
    right.set_yscale("symlog", linthresh=0.01)
    fig.suptitle("Many edits, one after another without resetting")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def batched_table(batched: list[dict], tune: dict) -> list[str]:
    """Batched edits per model and batch size: mean success and median drawdown over the batches."""
    sizes = sorted({int(r["batch_size"]) for r in batched})
    lines = ["| model | batch lr x steps | " + " | ".join(f"{s} at once" for s in sizes) + " |", "|---|---|" + "---|" * len(sizes)]
    for model in MODELS:
        cells = []
        for size in sizes:
            batches = [r for r in batched if r["model"] == model and int(r["batch_size"]) == size]
            success = sum(r["edit_success"] for r in batches) / len(batches)
            cells.append(f"{success:.2f} / {statistics.median(r['ppl_drawdown'] for r in batches):.3g}")
        lines.append(f"| {model} | {tune[model]['batch_lr']:g} x {tune[model]['batch_steps']} | " + " | ".join(cells) + " |")
    return lines


def finite(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "inf"


def tune_table(tune: dict, grid: dict) -> list[str]:
    """Each model's chosen settings with their validation figures."""
    lines = ["| model | edit lr | validation success / drawdown | batch lr x steps | validation batch success / drawdown |",
             "|---|---|---|---|---|"]
    for m in MODELS:
        single, batched = (grid[m][kind]["grid"][grid[m][kind]["chosen"]] for kind in ("single", "batched"))
        lines.append(f"| {m} | {tune[m]['edit_lr']:g} | {single['edit_success']:.3g} / {finite(single['ppl_drawdown'])} | "
                     f"{tune[m]['batch_lr']:g} x {tune[m]['batch_steps']} | {batched['edit_success']:.3g} / "
                     f"{finite(batched['ppl_drawdown'])} |")
    return lines


def setting_label(setting: dict) -> str:
    return ", ".join(f"{key} {value:g}" for key, value in setting.items())


def editors_section(evaluate: dict, editors: dict | None) -> list[str]:
    """The editors after ENN beside it, and their paired differences with ENN and with FT of the base model."""
    if not editors:
        return []
    chosen = [name for name, summary in editors.items() if isinstance(summary, dict) and summary.get("setting")]
    lines = [f"## Editors on the same {editors['n_edits']} test edits", "",
             "The editors after ENN edit the base model: ROME and MEMIT in closed form (no training), MEND with the "
             "editor network stage `mend` trained (the model itself unchanged). Each closed-form editor's setting was "
             "chosen on validation edits "
             "(lowest drawdown among those reaching the target success, else the best success): "
             + "; ".join(f"{name.upper()} {setting_label(editors[name]['setting'])} (" + ", ".join(
                 f"{k}: success {v['edit_success']:.2f}, drawdown {v['ppl_drawdown']:.3g}"
                 for k, v in editors[name]["grid"].items()) + ")" for name in chosen)
             + ". A batched editor is read as one update for all the edits: its edit success is the fraction that "
             "hold afterwards.", "",
             field_table(editor_rows(evaluate, editors)), ""]
    for comparison, per_procedure in editors.get("differences", {}).items():
        lines.append(f"Paired over the same edits, {comparison}: " + "; ".join(
            f"{METRICS[key][0]} {difference(d)} ({direction(d, METRICS[key][2])})"
            for key, d in per_procedure["edit"].items() if key in METRICS) + ".")
    return lines + [""]


def write_report(
    evaluate: dict, tune: dict, tune_grid: dict, sweep: dict, sweep_rows: list[dict], sequential: list[dict],
    batched: list[dict], figures: str, out: str, editors: dict | None = None,
) -> None:
    """Draw the figures into `figures` and write the Markdown report to `out` (both atomically)."""
    chosen = {m: sweep[m]["matched"]["setting"] for m in MODELS}
    with atomic_path(figures) as tmp:
        tmp.mkdir()
        plot_reliability(evaluate, tmp / "reliability.png")
        plot_tradeoff(sweep_rows, chosen, tmp / "tradeoff.png")
        plot_sequential(sequential, tmp / "sequential.png")
    rel = os.path.relpath(figures, Path(out).parent)
    lines = [
        "# Edit evaluation report",
        "",
        "Generated by the `report` stage from `metrics/`; do not edit by hand.",
        "",
        verdict(evaluate, sweep),
        "",
        f"## Settings chosen on {tune['n_edits']} validation edits (stage `tune`)",
        "",
        *tune_table(tune, tune_grid),
        "",
        f"## One edit at a time ({evaluate['n_edits']} held-out test edits, mean [95% bootstrap CI])",
        "",
        "In the field's names (fixed-step edit): efficacy = counterfactual success, paraphrase = generality,",
        "neighbourhood = 1 − leakage, fluency = ROME's weighted bigram/trigram entropy of greedy generations.",
        "",
        field_table([(model, evaluate[model]["ft"]) for model in MODELS]),
        "",
        "`ft`: plain gradient steps on the edit; `ft_kl`: the same with a KL penalty on a locality sample;",
        "`until_success`: steps until every new-name token is the argmax, at most `until_success.max_steps` (ENN's protocol;",
        "`steps_to_success` over the edits that succeeded).",
        f"Generality is measured on the {evaluate['base']['ft'].get('generality_n', 'all')} edits that have probes "
        "(other sentences of the same article naming the person); fluency on the first "
        f"{evaluate['base']['ft'].get('fluency_n', 'all')} edits, from the prompts {', '.join(repr(p) for p in evaluate.get('fluency_prompts', []))}.",
        f"Drawdown is relative to each model's own unedited perplexity on the {evaluate.get('locality_tokens', '')} "
        "locality tokens: " + ", ".join(f"{m} {finite(evaluate[m]['ppl_unedited'])}" for m in MODELS) + "; `ppl_post` is the "
        "absolute perplexity after the edit.",
        "",
        reliability_table(evaluate),
        "",
        "Paired differences over the same edits (95% bootstrap CI):",
        "",
        differences_table(evaluate),
        "",
        f"![reliability]({rel}/reliability.png)",
        "",
        f"## Edit strength: drawdown at matched success ({sweep['n_edits']} validation edits choose, {sweep['n_edits']} test edits tell)",
        "",
        f"Per model, the setting with the lowest validation drawdown among those reaching edit success >= "
        f"{sweep['target_success']:g} on validation edits (else the most successful one), and its figures on the test edits:",
        "",
        "| model | setting | validation success / drawdown | test edit success | test drawdown |",
        "|---|---|---|---|---|",
        *(f"| {m} | {sweep[m]['matched']['setting']} | {sweep[m]['matched']['val']['edit_success']:.3g} / "
          f"{sweep[m]['matched']['val']['ppl_drawdown']:.3g} | {with_interval(sweep[m]['matched']['test'], 'edit_success')} | "
          f"{with_interval(sweep[m]['matched']['test'], 'ppl_drawdown')} |" for m in MODELS),
        "",
        "Test drawdown differences at each model's matched setting, paired over the same edits: "
        + "; ".join(f"{name} {difference(d['ppl_drawdown'])}" for name, d in sweep["differences"].items()),
        "",
        f"![tradeoff]({rel}/tradeoff.png)",
        "",
        "## Many edits",
        "",
        "One after another without resetting (each model at its tuned edit lr):",
        "",
        "| model | edits | retention | drawdown |",
        "|---|---|---|---|",
    ]
    for model in MODELS:
        last = [r for r in sequential if r["model"] == model][-1]
        lines.append(f"| {model} | {int(last['n_edits'])} | {last['retention']:.3g} | {finite(last['ppl_drawdown'])} |")
    lines += ["", "Together in one batch (the batch loss sums each edit's mean loss; lr and steps tuned on validation "
              "batches): edit success / median drawdown, over the same edits for every batch size:", ""]
    lines += batched_table(batched, tune)
    lines += ["", f"![sequential]({rel}/sequential.png)", ""]
    lines += editors_section(evaluate, editors)
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines))
