"""The levers' frontier (README, "Editable without the cost"): for each pilot, the editable model's unedited
perplexity against what its edits do, on validation edits (stage `validate`), beside the fine-tuned model's.

`python -m editable_lm.frontier --export NAME ...` copies each DVC experiment's validation figures (and its test
figures, if it ran `evaluate`) into `experiments/levers/NAME/`; `python -m editable_lm.frontier experiments/levers/*/`
writes the table and figure, and with `--test` the same from the test figures (a recipe's confirming runs, each
read once) into `test.md` and `test.png`; `--test --against REF` also pairs each run's edits with those of the run in
folder REF over the same test edits (`evaluate_edits.csv`: the same split), into `against.md`: whether a recipe's
editable model does better than another recipe's, and than that recipe's fine-tuned model.
Where a pilot's folder has the `tune` stage's grid, the table also gives each model's batched-edit success at its
tuned batch setting (validation batches of `tune.batch_size`): many edits at once, which one-edit pilots miss.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no screen needed
import matplotlib.pyplot as plt  # noqa: E402

from editable_lm.errors import EditLMError  # noqa: E402
from editable_lm.metrics import paired_differences  # noqa: E402
from editable_lm.storage import atomic_path, read_csv, write_json  # noqa: E402

DETAILS, TEST_DETAILS, GRID, ROWS = "validate_details.json", "evaluate_details.json", "tune_grid.json", "evaluate_edits.csv"
# What `export` copies from an experiment's commit, and the name it gets in the pilot's folder
EXPORTED = {"metrics/validate_details.json": DETAILS, "metrics/tune.json": "tune.json", "metrics/tune_grid.json": GRID,
            "dvclive/editable/metrics.json": "editable_training.json"}
OPTIONAL = {"metrics/evaluate_details.json": TEST_DETAILS, "metrics/evaluate_edits.csv": ROWS}  # if it ran `evaluate`
# The frontier's y axes: what an edit of the editable model does (ft at its tuned lr), and which way is better.
AXES = {"edit_success": True, "generality": True, "leakage": False}
RATIO_CLIP = 2.0  # a pilot beyond it (a diverged model) is drawn at the edge, its ratio in its label
PAIRED = ("edit_success", "generality", "leakage")  # editable - finetuned, with intervals
ACROSS = ("edit_success", "generality", "leakage", "ppl_post")  # paired across two runs' edits (`--against`)


def pilot(directory: Path, details: str = DETAILS) -> dict:
    """One pilot's figures from its `validate_details.json` (or `evaluate_details.json`: the same fields on test
    edits): each model's unedited perplexity, the editable and fine-tuned models' edit figures, and the paired
    differences editable - finetuned."""
    path = Path(directory, details)
    if not path.is_file():
        figures, stage = ("validation", "validate") if details == DETAILS else ("test", "evaluate")
        raise EditLMError(f"{path}: no {figures} figures (run the {stage} stage, or --export the experiment)")
    details = json.loads(path.read_text())
    models = {label: details[label] for label in ("finetuned", "editable")}
    grid_path = Path(directory, GRID)
    grid = json.loads(grid_path.read_text()) if grid_path.is_file() else None  # older pilots: not exported
    return {
        "name": Path(directory).name,
        "n_edits": details["n_edits"],
        "ppl_unedited": {label: m["ppl_unedited"] for label, m in models.items()},
        "fluency_unedited": {label: m["fluency_unedited"] for label, m in models.items()},
        "ft": {label: m["ft"] for label, m in models.items()},
        "paired": {key: details["differences"]["editable-finetuned"]["ft"][key] for key in PAIRED
                   if key in details["differences"]["editable-finetuned"]["ft"]},
        "batched": {label: batched_success(grid[label]) for label in models} if grid else None,
    }


def batched_success(model_grid: dict) -> float:
    """A model's batched-edit success at the batch lr and steps `tune` chose for it (validation batches)."""
    batched = model_grid["batched"]
    return batched["grid"][batched["chosen"]]["edit_success"]


def ppl_ratio(row: dict) -> float:
    """The editable model's unedited perplexity over the fine-tuned model's (the target: at most 1.1)."""
    return row["ppl_unedited"]["editable"] / row["ppl_unedited"]["finetuned"]


def targets_met(row: dict) -> list[str]:
    """Which of issue 20's five targets a pilot meets: the unedited perplexity ratio at most 1.1, editable edit
    success at least 0.95, post-edit median perplexity at most the fine-tuned model's, and the paired generality
    and leakage intervals (editable - finetuned) reaching zero on the right side."""
    ft, paired = row["ft"], row["paired"]
    checks = {
        "ratio": ppl_ratio(row) <= 1.1,
        "success": ft["editable"]["edit_success"] >= 0.95,
        "post-edit ppl": ft["editable"]["ppl_post_median"] <= ft["finetuned"]["ppl_post_median"],
        "generality": "generality" in paired and paired["generality"]["high"] >= 0,
        "leakage": "leakage" in paired and paired["leakage"]["low"] <= 0,
    }
    return [name for name, met in checks.items() if met]


def table(rows: list[dict]) -> str:
    """A Markdown table: a row per pilot, the paired differences with their 95% intervals."""
    def paired(row, key):
        d = row["paired"].get(key)
        return "-" if d is None else f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"

    lines = [
        "| pilot | unedited ppl, editable / fine-tuned (ratio) | fluency, editable / fine-tuned | edit success, "
        "editable / fine-tuned | paired: edit success | generality | leakage | post-edit ppl (median), editable / "
        "fine-tuned | batched success (tuned), editable / fine-tuned | targets met |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ppl, flu, ft, batched = row["ppl_unedited"], row["fluency_unedited"], row["ft"], row["batched"]
        lines.append(
            f"| {row['name']} | {ppl['editable']:.3g} / {ppl['finetuned']:.3g} ({ppl_ratio(row):.3g}) | "
            f"{flu['editable']:.2f} / {flu['finetuned']:.2f} | {ft['editable']['edit_success']:.2f} / "
            f"{ft['finetuned']['edit_success']:.2f} | " + " | ".join(paired(row, key) for key in PAIRED) +
            f" | {ft['editable']['ppl_post_median']:.3g} / {ft['finetuned']['ppl_post_median']:.3g} | "
            + (f"{batched['editable']:.2f} / {batched['finetuned']:.2f} |" if batched else "- |")
            + f" {len(targets_met(row))} of 5 |"
        )
    return "\n".join(lines) + "\n"


def across(run: Path, reference: Path, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Paired over the same test edits (`ft` at each model's tuned lr): `run`'s editable model - `reference`'s
    editable model, and - `reference`'s fine-tuned model, per key of `ACROSS`."""
    rows = [{**row, "model": f"{tag} {row['model']}"} for tag, directory in (("run", run), ("reference", reference))
            for row in read_csv(Path(directory, ROWS)) if row["procedure"] == "ft"]
    edits = [{row["edit_id"] for row in rows if row["model"] == f"{tag} editable"} for tag in ("run", "reference")]
    if edits[0] != edits[1]:
        raise EditLMError(f"{run} and {reference}: not the same test edits (another split?): nothing to pair")
    comparisons = [("run editable", f"reference {label}") for label in ("editable", "finetuned")]
    return {label: by["ft"] for label, by in paired_differences(rows, comparisons, ACROSS, n_bootstrap, seed).items()}


def across_table(runs: list[Path], reference: Path) -> str:
    """A Markdown row per run: its editable model against `reference`'s editable and fine-tuned models."""
    def cell(d):
        return f"{d['mean']:+.3g} [{d['low']:+.3g}, {d['high']:+.3g}]"

    heads = [f"{key}, {what}" for what in ("editable - its editable", "editable - its fine-tuned") for key in ACROSS]
    lines = [f"| run (against {reference.name}) | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for run in runs:
        pairs = across(run, reference)
        lines.append(f"| {run.name} | " + " | ".join(cell(pairs[f"run editable-reference {label}"][key])
                                                     for label in ("editable", "finetuned") for key in ACROSS) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, edits: str = "Validation edits") -> None:
    """Per axis of `AXES`: each pilot's editable model at (unedited perplexity / the fine-tuned model's, its
    figure), and its fine-tuned model at (1, its figure); the 1.1 target as a line."""
    fig, axes = plt.subplots(1, len(AXES), figsize=(4.2 * len(AXES), 3.8))
    for ax, (key, higher) in zip(axes, AXES.items()):
        for row in rows:
            editable, finetuned = row["ft"]["editable"].get(key), row["ft"]["finetuned"].get(key)
            if editable is None or finetuned is None:
                continue
            ratio = ppl_ratio(row)
            x, label = min(ratio, RATIO_CLIP), row["name"] if ratio <= RATIO_CLIP else f"{row['name']} ({ratio:.3g}x)"
            ax.scatter([x], [editable], color="tab:blue", marker="o" if ratio <= RATIO_CLIP else ">")
            ax.annotate(label, (x, editable), fontsize=6, xytext=(3, 3), textcoords="offset points")
            ax.scatter([1.0], [finetuned], color="tab:orange", marker="x")
        ax.axvline(1.1, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlim(0.9, RATIO_CLIP * 1.08)
        ax.set_xlabel("unedited perplexity / fine-tuned model's")
        ax.set_ylabel(f"{key} ({'higher' if higher else 'lower'} is better)")
    axes[0].set_title("blue: editable pilots; orange x: fine-tuned", fontsize=8)
    fig.suptitle(f"{edits} ({rows[0]['n_edits']} per pilot), ft at each model's tuned lr", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def export(name: str, dest: Path, repo: Path = Path(".")) -> None:
    """Copy a DVC experiment's validation (and test) figures, tune choices and last training losses into `dest`."""
    # DVC keeps each experiment as a git ref refs/exps/<baseline>/<name>, whichever commit is checked out now.
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps"], cwd=repo,
                          capture_output=True, text=True, check=True).stdout.split("\n")
    revs = [line.split()[1] for line in refs if line and line.split()[0].endswith(f"/{name}")]
    if not revs:
        raise EditLMError(f"{name}: no such DVC experiment (dvc exp list --all-commits lists the names)")
    for file, local in (EXPORTED | OPTIONAL).items():
        shown_file = subprocess.run(["git", "show", f"{revs[0]}:{file}"], cwd=repo, capture_output=True)
        if shown_file.returncode != 0 and file in OPTIONAL:
            continue
        if shown_file.returncode != 0:
            raise EditLMError(f"{name}: {file} is not in the experiment's commit {revs[0][:7]}")
        if local.endswith(".csv"):  # the rows as the stage wrote them, byte for byte
            with atomic_path(Path(dest, local)) as tmp:
                tmp.write_bytes(shown_file.stdout)
        else:
            write_json(Path(dest, local), json.loads(shown_file.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dirs", nargs="*", type=Path, help="pilot folders, each with a validate_details.json")
    parser.add_argument("--export", nargs="+", metavar="NAME", help="DVC experiments to copy into --out/NAME")
    parser.add_argument("--out", type=Path, default=Path("experiments/levers"))
    parser.add_argument("--test", action="store_true", help="the test figures (evaluate_details.json): test.md, test.png")
    parser.add_argument("--against", type=Path, metavar="REF", help="with --test: pair each run's test edits with REF's")
    args = parser.parse_args()
    try:
        if args.against and not args.test:  # before anything is written
            raise EditLMError("--against pairs test edits: give --test too")
        for name in args.export or []:
            export(name, args.out / name)
        if args.dirs:
            rows = [pilot(d, TEST_DETAILS if args.test else DETAILS) for d in args.dirs]
            stem = "test" if args.test else "frontier"
            with atomic_path(args.out / f"{stem}.md") as tmp:
                tmp.write_text(table(rows))
            plot(rows, args.out / f"{stem}.png", "Test edits" if args.test else "Validation edits")
            if args.against:
                text = across_table(args.dirs, args.against)
                with atomic_path(args.out / "against.md") as tmp:
                    tmp.write_text(text)
    except EditLMError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
