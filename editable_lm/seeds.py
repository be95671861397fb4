"""The headline figures over several runs of the pipeline (training seeds, a replicate), from DVC experiments.

    python -m editable_lm.seeds main seed1 seed2 --out metrics/seeds.json

Each name is a git revision (`main`, a commit) or a DVC experiment; `dvc exp show --json` gives its params,
and its evaluation details are read from its commit (`git show REV:metrics/evaluate_details.json`), so that
each run's paired intervals can say whether the claim holds in that run. Prints a Markdown table; `--out`
also gets the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess

import numpy as np
import yaml

from editable_lm.cli import run_stage
from editable_lm.errors import EditLMError
from editable_lm.report import METRICS, direction
from editable_lm.storage import write_json

DETAILS = "metrics/evaluate_details.json"
MODELS = ("finetuned", "editable")
PROCEDURES = ("ft", "until_success")
COMPARISON = "editable-finetuned"


def experiment_revisions(shown: list[dict]) -> dict[str, str]:
    """Name -> commit of every experiment in `dvc exp show --json` output (its baselines by name and rev too)."""
    revisions = {}
    for baseline in shown:
        if baseline.get("rev") and baseline["rev"] != "workspace":
            revisions[baseline["rev"]] = baseline["rev"]
            if baseline.get("name"):
                revisions[baseline["name"]] = baseline["rev"]
        for exp in baseline.get("experiments") or []:
            if exp.get("name"):
                revisions[exp["name"]] = exp["revs"][0]["rev"]
    return revisions


def git_show(rev: str, path: str) -> str:
    """The text of `path` at the git revision `rev`."""
    result = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    if result.returncode != 0:
        raise EditLMError(f"{rev}: no {path} in that revision ({result.stderr.strip()})")
    return result.stdout


def run_figures(details: dict) -> dict[str, float | str]:
    """One run's headline figures: each model's means per procedure, each paired difference and what it says."""
    figures: dict[str, float | str] = {}
    for model in MODELS:
        figures[f"{model}.ppl_unedited"] = details[model]["ppl_unedited"]
        for procedure in PROCEDURES:
            for key in METRICS:
                if key in details[model].get(procedure, {}):
                    figures[f"{model}.{procedure}.{key}"] = details[model][procedure][key]
    for procedure in PROCEDURES:
        for key, d in details["differences"][COMPARISON].get(procedure, {}).items():
            if key in METRICS:
                figures[f"{COMPARISON}.{procedure}.{key}"] = d["mean"]
                figures[f"{COMPARISON}.{procedure}.{key}.says"] = direction(d, METRICS[key][2])
    return figures


def spread(runs: dict[str, dict]) -> dict[str, dict]:
    """Per figure over the runs: mean, min, max; for a paired difference, in how many runs it wins or loses."""
    names = list(runs)
    out = {}
    for key in runs[names[0]]:
        values = [runs[name].get(key) for name in names]
        if key.endswith(".says"):
            out[key] = {outcome: values.count(outcome) for outcome in ("wins", "loses", "no clear difference")}
        elif all(isinstance(v, (int, float)) for v in values):
            out[key] = {"mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values))}
    return out


def markdown(runs: dict[str, dict], summary: dict[str, dict], seeds: dict[str, str]) -> str:
    names = list(runs)
    lines = ["| figure | " + " | ".join(f"{n} ({seeds[n]})" for n in names) + " | mean [min, max] |",
             "|---|" + "---|" * (len(names) + 1)]
    for key, s in summary.items():
        if key.endswith(".says"):
            continue
        cells = []
        for name in names:
            cell = f"{runs[name][key]:.3g}"
            if f"{key}.says" in runs[name]:
                cell += f" ({runs[name][key + '.says']})"
            cells.append(cell)
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {s['mean']:.3g} [{s['min']:.3g}, {s['max']:.3g}] |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="git revisions or DVC experiment names")
    parser.add_argument("--out", help="write the figures and their spread as JSON here")
    args = parser.parse_args()
    shown = subprocess.run(["dvc", "exp", "show", "--json", "--all-commits"], capture_output=True, text=True)
    if shown.returncode != 0:
        raise EditLMError(f"dvc exp show failed: {shown.stderr.strip().splitlines()[-1:]}")
    revisions = experiment_revisions(json.loads(shown.stdout))
    runs, seeds = {}, {}
    for name in args.runs:
        rev = revisions.get(name, name)
        params = yaml.safe_load(git_show(rev, "params.yaml"))
        seeds[name] = f"split {params['split']['seed']}, train {params['train']['seed']}"
        runs[name] = run_figures(json.loads(git_show(rev, DETAILS)))
    summary = spread(runs)
    print(markdown(runs, summary, seeds))
    if args.out:
        write_json(args.out, {"runs": {name: {"seeds": seeds[name], **runs[name]} for name in runs}, "spread": summary})


if __name__ == "__main__":
    run_stage(main)
