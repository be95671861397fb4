"""The evaluation as figures (PNG) and a Markdown report, rebuilt by the pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed
import matplotlib.pyplot as plt  # noqa: E402

from editable_lm.evaluation import MODELS  # noqa: E402
from editable_lm.storage import atomic_path  # noqa: E402

RATES = ("edit_success", "counterfactual_success", "generality", "leakage", "top1_agreement")
TABLE = RATES + ("ppl_drawdown", "ppl_drawdown_median", "kl", "logp_new_pre", "logp_new_post", "steps_to_success", "sec_per_edit")


def with_interval(metrics: dict, key: str) -> str:
    """`mean [low, high]` for a metric, `-` where it is missing."""
    if key not in metrics:
        return "-"
    if f"{key}_low" not in metrics:
        return f"{metrics[key]:.3g}"
    return f"{metrics[key]:.3g} [{metrics[f'{key}_low']:.3g}, {metrics[f'{key}_high']:.3g}]"


def procedures_of(model_metrics: dict) -> dict[str, dict]:
    """The per-procedure summaries of one model in evaluate.json (other keys, e.g. edit_lr, are scalars)."""
    return {name: value for name, value in model_metrics.items() if isinstance(value, dict)}


def difference(d: dict, percent: bool = False) -> str:
    """`mean [low, high]` of a paired difference."""
    f = (lambda x: f"{x:+.0%}") if percent else (lambda x: f"{x:+.3g}")
    return f"{f(d['mean'])} [{f(d['low'])}, {f(d['high'])}]"


def direction(d: dict, better: str, worse: str, lower_is_better: bool = False) -> str:
    """What a paired interval says: `better`, `worse`, or no clear difference (the interval holds 0)."""
    low, high = (-d["high"], -d["low"]) if lower_is_better else (d["low"], d["high"])
    return better if low > 0 else worse if high < 0 else "no clearer difference than the interval allows"


def verdict(evaluate: dict, sweep: dict) -> str:
    """One paragraph answering the study's question from the measured numbers and their paired intervals."""
    ft = {m: evaluate[m]["ft"] for m in MODELS}
    diff = evaluate["differences"]["editable-finetuned"]["ft"]
    matched = {m: sweep[m]["matched"] for m in MODELS}
    at_match = sweep["differences"]["editable-finetuned"]["ppl_drawdown"]
    target = sweep["target_success"]
    reached = [m for m in MODELS if matched[m]["edit_success"] >= target]
    return (
        f"**Verdict.** On {evaluate['n_edits']} held-out test edits, one fixed-step edit (`ft`, each model at the "
        f"learning rate chosen for it on validation edits) succeeds on {ft['editable']['edit_success']:.0%} of edits "
        f"for the editable model, {ft['finetuned']['edit_success']:.0%} for the fine-tuned model and "
        f"{ft['base']['edit_success']:.0%} for the base model (editable - fine-tuned, paired: "
        f"{difference(diff['edit_success'], percent=True)}), with mean perplexity drawdown "
        f"{ft['editable']['ppl_drawdown']:.3g} vs {ft['finetuned']['ppl_drawdown']:.3g} "
        f"(medians {ft['editable']['ppl_drawdown_median']:.3g} vs {ft['finetuned']['ppl_drawdown_median']:.3g}; "
        f"paired difference {difference(diff['ppl_drawdown'])}, median {diff['ppl_drawdown']['median']:+.3g}). "
        f"In the strength sweep ({sweep['n_edits']} test edits), {len(reached)} of {len(MODELS)} models reach edit "
        f"success >= {target:g} ({', '.join(reached) if reached else 'none'}); at each model's lowest-drawdown setting "
        f"among those that do (else its most successful one) the editable model's drawdown is {matched['editable']['ppl_drawdown']:.3f} (success {matched['editable']['edit_success']:.0%}) "
        f"against {matched['finetuned']['ppl_drawdown']:.3f} (success {matched['finetuned']['edit_success']:.0%}) "
        f"for the fine-tuned model (difference {difference(at_match)}). "
        f"So, on this data and budget, editable training makes a single edit "
        f"{direction(diff['edit_success'], 'more reliable', 'less reliable')} and "
        f"{direction(diff['ppl_drawdown'], 'more local', 'less local', lower_is_better=True)} than fine-tuning "
        f"(95% paired bootstrap intervals)." + costs(evaluate)
    )


def costs(evaluate: dict) -> str:
    """The verdict's last sentence: each model's own unedited perplexity and its edits' generality, where measured."""
    parts = []
    if all("ppl_unedited" in evaluate[m] for m in MODELS):
        parts.append("unedited perplexity on the locality tokens is "
                     + ", ".join(f"{evaluate[m]['ppl_unedited']:.3g} ({m})" for m in MODELS[::-1]))
    if all("generality" in evaluate[m]["ft"] for m in MODELS):
        parts.append("edits carry over to other sentences about the same person in "
                     + ", ".join(f"{evaluate[m]['ft']['generality']:.0%} ({m})" for m in MODELS[::-1]) + " of probes")
    return f" What it costs: {'; '.join(parts)}." if parts else ""


def differences_table(evaluate: dict) -> str:
    """Paired differences between models over the same edits, per procedure and metric."""
    lines = ["| comparison | procedure | metric | mean [95% CI] | median |", "|---|---|---|---|---|"]
    for comparison, per_procedure in evaluate["differences"].items():
        for procedure, metrics in per_procedure.items():
            for key, d in metrics.items():
                lines.append(f"| {comparison} | {procedure} | {key} | {difference(d)} | {d['median']:+.3g} |")
    return "\n".join(lines)


def reliability_table(evaluate: dict) -> str:
    """Models x procedures x metrics, each with its 95% bootstrap interval."""
    lines = ["| model | procedure | " + " | ".join(TABLE) + " |", "|---|---|" + "---|" * len(TABLE)]
    for model in MODELS:
        for procedure, metrics in procedures_of(evaluate[model]).items():
            lines.append(f"| {model} | {procedure} | " + " | ".join(with_interval(metrics, k) for k in TABLE) + " |")
    return "\n".join(lines)


def plot_reliability(evaluate: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(MODELS)
    for i, model in enumerate(MODELS):
        metrics = evaluate[model]["ft"]
        keys = [k for k in RATES if k in metrics]
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


def plot_tradeoff(sweep: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in MODELS:
        rows = sorted((r for r in sweep if r["model"] == model), key=lambda r: r["ppl_drawdown"])
        ax.plot([r["ppl_drawdown"] for r in rows], [r["edit_success"] for r in rows], "o-", label=model)
        for r in rows:
            ax.annotate(f"{r['lr']:g}x{int(r['steps'])}", (r["ppl_drawdown"], r["edit_success"]), fontsize=6)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("perplexity drawdown (relative)")
    ax.set_ylabel("edit success")
    ax.set_title("Edit strength sweep (lr x steps)")
    ax.legend()
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


def write_report(
    evaluate: dict, tune: dict, sweep: dict, sweep_rows: list[dict], sequential: list[dict], batched: list[dict], figures: str, out: str
) -> None:
    """Draw the figures into `figures` and write the Markdown report to `out` (both atomically)."""
    with atomic_path(figures) as tmp:
        tmp.mkdir()
        plot_reliability(evaluate, tmp / "reliability.png")
        plot_tradeoff(sweep_rows, tmp / "tradeoff.png")
        plot_sequential(sequential, tmp / "sequential.png")
    rel = os.path.relpath(figures, Path(out).parent)
    lines = [
        "# Edit evaluation report",
        "",
        "Generated by the `report` stage from `metrics/`; do not edit by hand.",
        "",
        verdict(evaluate, sweep),
        "",
        f"## Edit learning rates, chosen on {tune['n_edits']} validation edits",
        "",
        "| model | edit lr | validation edit success | validation drawdown |",
        "|---|---|---|---|",
        *(f"| {m} | {tune[m]['edit_lr']:g} | {tune[m]['edit_success']:.3g} | {tune[m]['ppl_drawdown']:.3g} |" for m in MODELS),
        "",
        f"## One edit at a time ({evaluate['n_edits']} held-out test edits, mean [95% bootstrap CI])",
        "",
        "`ft`: plain gradient steps on the edit; `ft_kl`: the same with a KL penalty on a locality sample;",
        "`until_success`: steps until every new-name token is the argmax, at most `evaluate.max_steps` (ENN's protocol;",
        "`steps_to_success` over the edits that succeeded).",
        f"Generality is measured on the {evaluate['base']['ft'].get('generality_n', 'all')} edits that have probes "
        "(other sentences of the same article naming the person).",
        f"Drawdown is relative to each model's own unedited perplexity on the {evaluate.get('locality_tokens', '')} "
        "locality tokens: " + ", ".join(f"{m} {evaluate[m]['ppl_unedited']:.3g}" for m in MODELS) + ".",
        "",
        reliability_table(evaluate),
        "",
        "Paired differences over the same edits (95% bootstrap CI):",
        "",
        differences_table(evaluate),
        "",
        f"![reliability]({rel}/reliability.png)",
        "",
        f"## Edit strength: drawdown at matched success ({sweep['n_edits']} test edits)",
        "",
        f"Lowest perplexity drawdown among the sweep's settings that reach edit success >= {sweep['target_success']:g}"
        " (else the setting with the highest success):",
        "",
        "| model | setting | edit success | drawdown |",
        "|---|---|---|---|",
        *(f"| {m} | {sweep[m]['matched']['setting']} | {with_interval(sweep[m]['matched'], 'edit_success')} | "
          f"{with_interval(sweep[m]['matched'], 'ppl_drawdown')} |" for m in MODELS),
        "",
        "Drawdown differences at each model's matched setting, paired over the same edits: "
        + "; ".join(f"{name} {difference(d['ppl_drawdown'])}" for name, d in sweep["differences"].items()),
        "",
        f"![tradeoff]({rel}/tradeoff.png)",
        "",
        "## Many edits",
        "",
        "| model | edits | retention | drawdown | batched success | batched drawdown |",
        "|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        last = [r for r in sequential if r["model"] == model][-1]
        batches = [r for r in batched if r["model"] == model]
        success = sum(r["edit_success"] for r in batches) / len(batches)
        drawdown = sum(r["ppl_drawdown"] for r in batches) / len(batches)
        lines.append(f"| {model} | {int(last['n_edits'])} | {last['retention']:.3g} | {last['ppl_drawdown']:.3g} | {success:.3g} | {drawdown:.3g} |")
    lines += ["", f"![sequential]({rel}/sequential.png)", ""]
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines))
