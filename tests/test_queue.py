"""A grid of DVC experiments queued with `dvc exp run --queue` and run by two parallel workers (`dvc queue start
-j 2`) on the smoke configuration; `dvc exp show` with the edit metrics as columns, and `dvc metrics diff` /
`dvc plots diff` between two of them. Its own file, so that `make test`'s two workers can run it beside
tests/test_experiments.py's every-key experiment."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from smoke import ENV, SmokeRun, experiments, exp_params, flat, override, run

# The queued grid: two experiments (one each for two workers) whose training curves differ, run up to
# `evaluate` (what `dvc exp show` and `dvc metrics diff` read here; test_experiments runs the whole pipeline).
GRID = {"train.lr": (1e-5, 1e-3)}
STATUSES = ("Queued", "Running", "Success", "Failed")


def queue_status(repo: Path) -> dict[str, str]:
    """`dvc queue status`: experiment name -> Queued, Running, Success or Failed."""
    rows = {}
    for line in run(["dvc", "queue", "status"], repo).stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[-1] in STATUSES:
            rows[fields[1]] = fields[-1]
    return rows


@dataclass(frozen=True)
class Sweep:
    repo: Path
    names: list[str]  # in the order queued
    started: str  # the output of `dvc queue start -j 2`
    status: dict[str, str]  # the final queue status
    most_running: int  # the most experiments seen running at once
    logs: str


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, smoke_run: SmokeRun) -> Sweep:
    """The grid queued with `dvc exp run --queue` and run with `dvc queue start -j 2` until done."""
    repo = smoke_run.copy(tmp_path_factory.mktemp("experiments") / "editable-lm")
    sets = [arg for key, values in GRID.items() for arg in ("-S", f"{key}={','.join(map(override, values))}")]
    queued = run(["dvc", "exp", "run", "--queue", *sets, "evaluate"], repo).stdout
    names = re.findall(r"Queued experiment '([\w-]+)'", queued)
    assert set(queue_status(repo)) == set(names)
    # The workers that `dvc queue start` leaves running inherit its stdout: a file, not a pipe, so
    # that this call returns at once instead of when the workers exit.
    with open(repo.parent / "queue-start.log", "w+") as log:
        subprocess.run(
            ["dvc", "queue", "start", "-j", "2"], cwd=repo, env={**ENV, "OMP_NUM_THREADS": "1"},
            stdout=log, stderr=subprocess.STDOUT, check=True,
        )
        log.seek(0)
        started = log.read()
    most_running, deadline = 0, time.monotonic() + 600
    try:
        while True:
            status = queue_status(repo)
            most_running = max(most_running, sum(s == "Running" for s in status.values()))
            if not any(s in ("Queued", "Running") for s in status.values()) or time.monotonic() > deadline:
                break
            time.sleep(4)
    finally:
        # Workers exit by themselves once idle; this ends them now (and kills whatever still runs after a time-out).
        run(["dvc", "queue", "stop", "--kill"], repo, check=False)
    logs = "\n".join(
        run(["dvc", "queue", "logs", name], repo, check=False).stdout[-2000:] for name, s in status.items() if s != "Success"
    )
    return Sweep(repo, names, started, status, most_running, logs)


def named(sweep: Sweep, values: dict) -> str:
    """The experiment of the grid with these param values."""
    exps = experiments(sweep.repo)
    (name,) = [n for n in sweep.names if all(exp_params(exps[n])[k] == v for k, v in values.items())]
    return name


def test_queued_grid_runs_in_parallel(sweep):
    assert len(sweep.names) == 2
    assert "Started '2' new experiments task queue workers." in sweep.started
    assert sweep.status == {name: "Success" for name in sweep.names}, sweep.logs
    assert sweep.most_running == 2
    exps = experiments(sweep.repo)
    assert {exp_params(exps[n])["train.lr"] for n in sweep.names} == set(GRID["train.lr"])


def evaluate_metrics(data: dict) -> dict:
    """One experiment's metrics/evaluate.json, flattened: the headline (each model's unedited figures and means per
    procedure, the editable-finetuned mean paired differences); bounds and the rest are in evaluate_details.json."""
    return flat(data["metrics"]["metrics/evaluate.json"]["data"])


def test_exp_show_has_the_edit_metrics_as_columns(sweep):
    table = list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], sweep.repo).stdout)))
    columns = set(table[0])

    def column(key: str) -> str:
        (col,) = {key, f"metrics/evaluate.json:{key}"} & columns  # DVC prefixes the file when names clash
        return col

    rows = {row["Experiment"]: row for row in table if row["Experiment"] in sweep.names}
    assert set(rows) == set(sweep.names)
    exps = experiments(sweep.repo)
    for name, row in rows.items():
        metrics = evaluate_metrics(exps[name])
        assert {"editable.ft.edit_success", "editable-finetuned.ft.edit_success", "base.ppl_unedited"} <= set(metrics)
        assert not any(key.endswith(("_low", "_high")) for key in metrics)  # the headline, not the details
        for key, value in metrics.items():
            assert float(row[column(key)]) == pytest.approx(value, rel=1e-4, abs=1e-6), (name, key)
        assert float(row[column("train.lr")]) == exp_params(exps[name])["train.lr"]
    assert {float(row[column("train.lr")]) for row in rows.values()} == set(GRID["train.lr"])


def test_metrics_and_plots_diff_between_two_experiments(sweep, tmp_path):
    slow, fast = named(sweep, {"train.lr": 1e-5}), named(sweep, {"train.lr": 1e-3})

    diff = json.loads(run(["dvc", "metrics", "diff", slow, fast, "--all", "--json"], sweep.repo).stdout)
    exps = experiments(sweep.repo)
    old, new = evaluate_metrics(exps[slow]), evaluate_metrics(exps[fast])
    assert set(diff["metrics/evaluate.json"]) == set(old) | set(new)
    for key, change in diff["metrics/evaluate.json"].items():
        assert (change["old"], change["new"]) == (old.get(key), new.get(key)), key
    finetune_loss = diff["dvclive/finetune/metrics.json"]["train.loss_base"]
    assert finetune_loss["old"] != finetune_loss["new"]
    table = run(["dvc", "metrics", "diff", slow, fast, "--all"], sweep.repo).stdout
    assert slow in table and fast in table and "edit_success" in table

    plots = json.loads(run(["dvc", "plots", "diff", slow, fast, "--json"], sweep.repo).stdout)["data"]
    curves = {path: spec for path, specs in plots.items() for spec in specs if path.startswith("dvclive/")}
    for stage in ("finetune", "editable"):
        assert any(path.startswith(f"dvclive/{stage}/plots/metrics/") for path in curves), stage
    for path, spec in curves.items():
        assert spec["revisions"] == [slow, fast], path
        assert {point["rev"] for point in spec["content"]["data"]["values"]} == {slow, fast}, path
    loss = curves["dvclive/finetune/plots/metrics/train/loss_base.tsv"]["content"]["data"]["values"]
    by_rev = {rev: [p["loss_base"] for p in loss if p["rev"] == rev] for rev in (slow, fast)}
    assert by_rev[slow] != by_rev[fast]

    # The HTML page that a person opens: both experiments' curves in one figure per plot.
    run(["dvc", "plots", "diff", slow, fast, "-o", str(tmp_path / "plots")], sweep.repo)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert slow in page and fast in page and "loss_base" in page
