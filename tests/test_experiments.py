"""Experiments with real DVC on the smoke configuration: `dvc exp run -S` for every key of
params.yaml, a queued grid run by two parallel workers, `dvc exp show` with the edit metrics as
columns, and `dvc metrics diff` / `dvc plots diff` between two experiments.

"-S works for every key" is checked with one real experiment that sets every key at once to a
valid value other than the smoke run's: DVC must accept each override, check_params must accept
each value, every stage must rerun, and the experiment must record every value. One run instead of
one per key keeps this to a single pass through the pipeline.
"""

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
import yaml

from editable_lm.errors import EditLMError
from editable_lm.frontier import export

from smoke import ENV, SmokeRun, flat, ran_stages, run

# The queued grid: two experiments (one each for two workers) whose training curves differ, run up to
# `evaluate` (what `dvc exp show` and `dvc metrics diff` read here; the whole pipeline is run by the test above).
GRID = {"train.lr": (1e-5, 1e-3)}
STATUSES = ("Queued", "Running", "Success", "Failed")

# For "-S works for every key": candidates for each key of params.yaml; the first that differs from
# the smoke run's value is used. A key not listed gets a value by its type (`other_value`); a new
# string key must be added here.
OTHER_VALUES = {
    "data.source": ("wiki-vital",),  # the only offline corpus: the one key set to the value it already has
    "pairs.source": ("name-swaps",),  # an edit-set file is tested in test_formats: kept as it is
    "data.max_articles": (400, 500),  # enough people for every split with the biography-based pairs
    "data.min_words": (10, 9),
    "model.name": ("tiny-random-gpt2",),
    "pairs.n_process": (2, 1),
    "pairs.max_per_article": (3, 2),
    "pairs.context_sentences": (1, 2),
    "pairs.max_probes": (2, 1),
    "split.val_frac": (0.15, 0.2),
    "split.test_frac": (0.2, 0.15),
    "edit.blocks": (1, 2),
    "edit.module": ("attn",),  # GPT-2's attention: transformer.h.N.attn.c_attn / c_proj
    "train.steps": (2, 3),
    "train.lr": (1e-4, 1e-3),
    "train.batch_size": (3, 2),  # run.nproc becomes 2: each rank needs a passage of every batch
    "train.seq_len": (24, 32),
    "train.outer_blocks": (2, 3),
    "editable.inner_steps": (1, 2),
    "editable.inner_lr": (0.01, 0.03),
    "editable.cbase": (0.5, 1.0),
    "editable.cedit": (2.0, 1.0),
    "editable.cloc": (0.5, 1.0),
    "editable.loc_reference": ("finetuned",),  # the editable stage then reads the fine-tuned model
    "editable.cgen": (1.0,),
    "editable.cneigh": (1.0,),
    "train.decay": ("cosine",),
    "evaluate.edit_steps": (3, 2),  # FT+KL (in editors.names) needs at least 2
    "evaluate.edit_lr": (0.01, 0.03),
    # ft, and rome before memit; mend, to run MEND on the fine-tuned model (mend.model) with 2 passes
    "editors.names": (["ft", "ft_kl", "rome", "mend"], ["ft", "until_success", "rome", "memit"]),
    "ft_kl.kl_weight": (0.5, 1.0),
    "memit.n_layers": ([1, 2], [2]),
    "mend.model": ("finetuned",),  # MEND trained for, and evaluated on, the fine-tuned model
    "ft_kl.n_loc_passages": (1, 2),
    "evaluate.n_ppl_passages": (3, 4),
    "evaluate.seq_len": (24, 32),
    "reliability.n_edits": (2, 3),
    "reliability.n_leak_probes": (1, 2),
    "reliability.n_bootstrap": (50, 100),
    "sweep.n_edits": (1, 2),
    "tune.target_success": (0.8, 0.9),  # a rate: at most 1
    "sweep.lrs": ([0.03], [0.01]),
    "sweep.steps": ([2], [1]),
    "sequential.n_edits": (4, 5),
    "sequential.n_batched": (3, 4),
}


def other_value(key: str, value):
    if key in OTHER_VALUES:
        candidates = OTHER_VALUES[key]
        return next((c for c in candidates if c != value), candidates[0])
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2
    if isinstance(value, list) and len(value) > 1:
        return value[:1]
    raise AssertionError(f"{key}: add a valid value other than {value!r} to OTHER_VALUES")


def override(value) -> str:
    """A value as `dvc exp run -S key=value` writes it (Hydra's override syntax)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(override(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def experiments(repo: Path) -> dict[str, dict]:
    """`dvc exp show --json`: each experiment's name -> its data (params, metrics)."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    return {
        exp["name"]: exp["revs"][0]["data"]
        for baseline in shown
        for exp in (baseline.get("experiments") or [])
        if exp.get("name")
    }


def exp_params(data: dict) -> dict:
    return flat(data["params"]["params.yaml"]["data"])


def test_every_param_key_can_be_set_with_S(smoke_run: SmokeRun, tmp_path):
    repo = smoke_run.copy(tmp_path / "editable-lm")
    before = flat(yaml.safe_load((repo / "params.yaml").read_text()))
    wanted = {key: other_value(key, value) for key, value in before.items()}
    changed = {key for key in wanted if wanted[key] != before[key]}
    assert changed == set(before) - {"data.source", "pairs.source"}
    args = [arg for key, value in wanted.items() for arg in ("-S", f"{key}={override(value)}")]

    result = run(["dvc", "exp", "run", "-n", "every-key", *args], repo)
    stages = set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    assert ran_stages(result.stdout) == stages
    data = experiments(repo)["every-key"]
    assert exp_params(data) == wanted
    assert data["metrics"]["metrics/evaluate.json"]["data"]["n_edits"] == wanted["reliability.n_edits"]
    details = json.loads((repo / "metrics/editors_details.json").read_text())  # the workspace holds the run
    assert details["mend"]["model"] == wanted["mend.model"] == "finetuned"
    # A pilot's figures, exported from the experiment's commit: the run's own
    export("every-key", tmp_path / "levers" / "every-key", repo)
    exported = json.loads((tmp_path / "levers" / "every-key" / "validate_details.json").read_text())
    assert exported == json.loads((repo / "metrics/validate_details.json").read_text())
    assert exported["n_edits"] == wanted["validation.n_edits"]
    with pytest.raises(EditLMError, match="^no-such: no such DVC experiment"):
        export("no-such", tmp_path / "levers" / "no-such", repo)


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


def test_a_stage_imports_its_own_checkouts_code(tmp_path):
    """A queued experiment runs its stages in a temporary copy of the repository: there, `editable_lm` must be the
    copy's (the experiment's code), not the workspace's that the editable install points at (checkout.pth)."""
    copy = tmp_path / "checkout"
    (copy / "editable_lm").mkdir(parents=True)
    (copy / "editable_lm" / "__init__.py").write_text("WHERE = 'the copy'\n")
    (copy / "stages").mkdir()
    (copy / "stages" / "where.py").write_text("import editable_lm\nprint(getattr(editable_lm, 'WHERE', editable_lm.__file__))\n")
    import sys

    here = subprocess.run([sys.executable, "stages/where.py"], cwd=copy, capture_output=True, text=True, env=ENV)
    assert here.stdout.strip() == "the copy", here.stderr
    elsewhere = subprocess.run([sys.executable, str(copy / "stages" / "where.py")], cwd=tmp_path, capture_output=True,
                               text=True, env=ENV)
    assert elsewhere.stdout.strip().endswith("editable_lm/__init__.py")  # outside a checkout: the installed package
