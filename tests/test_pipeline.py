"""End to end: real `dvc repro` of the smoke configuration in a temporary copy of the repository."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from editable_lm.evaluation import EDIT_METRICS
from smoke import SMOKE, SmokeRun, repro, run, set_params


@pytest.fixture(scope="module")
def repo(tmp_path_factory, smoke_run: SmokeRun) -> Path:
    """A git + DVC copy of the project with the smoke params, reproduced once (shared: conftest's `smoke_run`)."""
    ran = smoke_run.ran
    assert ran >= {"download", "base_model", "pairs", "split", "finetune", "editable", "tune", "evaluate", "sweep", "sequential", "report"}
    return smoke_run.copy(tmp_path_factory.mktemp("pipeline") / "editable-lm")


def test_metrics_have_every_key_and_are_finite(repo):
    metrics = json.loads((repo / "metrics" / "evaluate.json").read_text())
    n_edits = SMOKE["reliability"]["n_edits"]
    assert metrics["n_edits"] == n_edits
    tuned = json.loads((repo / "metrics" / "tune.json").read_text())
    for model in ("base", "finetuned", "editable"):
        assert metrics[model]["edit_lr"] == tuned[model]["edit_lr"] in SMOKE["sweep"]["lrs"]
        assert 1 < metrics[model]["ppl_unedited"] < math.inf
        for procedure in ("ft", "ft_kl", "until_success"):
            values = metrics[model][procedure]
            # generality needs probes, which a 3-edit sample may lack, steps_to_success a success
            assert set(EDIT_METRICS) - {"generality", "steps_to_success"} <= set(values)
            assert all(math.isfinite(v) for v in values.values())
            assert values["edit_success_low"] <= values["edit_success"] <= values["edit_success_high"]
    for comparison in ("editable-finetuned", "editable-base"):
        d = metrics["differences"][comparison]["ft"]["edit_success"]
        assert d["low"] <= d["mean"] <= d["high"] and d["n"] == n_edits
    rows = (repo / "metrics" / "evaluate_edits.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 3 * n_edits
    shown = run(["dvc", "metrics", "show", "--json"], repo).stdout
    assert "edit_success" in shown and "loss_base" in shown and "retention" in shown and "differences" in shown


def test_report_and_figures(repo):
    report = (repo / "metrics" / "report.md").read_text()
    for model in ("base", "finetuned", "editable"):
        assert f"| {model} | ft |" in report and f"| {model} | ft_kl |" in report
    for figure in ("reliability", "tradeoff", "sequential"):
        png = repo / "metrics" / "figures" / f"{figure}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{figure}.png" in report
    sweep = (repo / "metrics" / "sweep.csv").read_text().splitlines()
    assert len(sweep) == 1 + 3 * len(SMOKE["sweep"]["lrs"]) * len(SMOKE["sweep"]["steps"])


def test_nothing_to_do_when_unchanged(repo):
    ran, _ = repro(repo)
    assert ran == set()


def test_data_stages_are_bit_identical_when_rerun(repo):
    before = (repo / "dvc.lock").read_text()
    ran, _ = repro(repo, "--force", "--single-item", "download", "pairs", "split")
    assert ran == {"download", "pairs", "split"}
    assert (repo / "dvc.lock").read_text() == before


def test_edit_lr_reruns_only_evaluation(repo):
    set_params(repo, evaluate={"edit_lr": 0.01})
    ran, _ = repro(repo)
    # check_params validates every change to params.yaml; it has no effect on the other stages.
    # The sweep sets its own learning rates, so it does not rerun.
    assert ran == {"check_params", "evaluate", "sequential", "report"}


def test_sweep_setting_retrains_nothing(repo):
    set_params(repo, sweep={"steps": [2]})
    ran, _ = repro(repo)
    assert ran == {"check_params", "sweep", "report"}
    set_params(repo, sweep={"lrs": [0.01, 0.05]})  # the rates tune chooses from: evaluation reruns, training does not
    ran, _ = repro(repo)
    assert ran == {"check_params", "tune", "sweep", "evaluate", "sequential", "report"}


def test_split_seed_reruns_split_and_after(repo):
    set_params(repo, split={"seed": 1})
    ran, _ = repro(repo)
    assert ran == {"check_params", "split", "finetune", "editable", "tune", "evaluate", "sweep", "sequential", "report"}


@pytest.mark.parametrize(
    "change, key",
    [
        ({"train": {"foo": 1}}, "train.foo"),
        ({"train": {"lr": -1.0}}, "train.lr"),
        ({"evaluate": {"edit_lr": -0.1}}, "evaluate.edit_lr"),
        ({"data": {"source": "no-such-corpus"}}, "data.source"),
    ],
)
def test_bad_params_fail_clearly_and_keep_outputs(repo, change, key):
    params_before = (repo / "params.yaml").read_text()
    lock_before = (repo / "dvc.lock").read_text()
    model_file = repo / "models" / "finetuned" / "model.safetensors"
    model_before = model_file.read_bytes()
    try:
        set_params(repo, **change)
        _, result = repro(repo, check=False)
        assert result.returncode != 0
        assert key in result.stderr + result.stdout
        assert model_file.read_bytes() == model_before
        assert (repo / "data" / "passages.jsonl").is_file()
        assert (repo / "dvc.lock").read_text() == lock_before
    finally:
        (repo / "params.yaml").write_text(params_before)


def test_stage_script_error_is_one_line(repo, tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  lr: -1\n")
    out = tmp_path / "finetuned"
    result = run(
        [sys.executable, "stages/finetune.py", "--params", str(bad), "--base", "models/base",
         "--split", "data/split", "--out", str(out), "--live", str(tmp_path / "live")],
        repo, check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: train.lr: must be > 0, got -1.0"]
    assert not out.exists()


def test_missing_input_is_a_clear_error(repo, tmp_path):
    result = run(
        [sys.executable, "stages/pairs.py", "--passages", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "p.jsonl")],
        repo, check=False,
    )
    assert result.returncode == 1
    assert "none.jsonl: file not found" in result.stderr
    assert not (tmp_path / "p.jsonl").exists()


def test_test_edits_never_reach_tuning_or_training(smoke_run: SmokeRun, tmp_path):
    """Scrambled test edits change neither the learning rates tuned on validation edits nor the trained models."""
    repo = smoke_run.copy(tmp_path / "editable-lm")
    scrambled = tmp_path / "split"
    scrambled.mkdir()
    for file in (repo / "data" / "split").iterdir():
        rows = [json.loads(line) for line in file.read_text().splitlines()]
        if file.name == "pairs_test.jsonl":
            rows = [{**row, "prefix": "Nothing to see here:", "new_name": "Zork Quux"} for row in rows]
        (scrambled / file.name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    models = [f"--{m}={repo / 'models' / m}" for m in ("base", "finetuned", "editable")]
    run([sys.executable, "stages/tune.py", f"--split={scrambled}", *models, f"--out={tmp_path / 'tune.json'}"], repo)
    assert json.loads((tmp_path / "tune.json").read_text()) == json.loads((repo / "metrics" / "tune.json").read_text())
    for stage in ("finetune", "editable"):
        out = tmp_path / stage
        run([sys.executable, f"stages/{stage}.py", "--base=models/base", f"--split={scrambled}", f"--out={out}",
             f"--live={tmp_path / 'live' / stage}", f"--resume-dir={tmp_path / 'ckpt' / stage}"], repo)
        trained = (repo / "models" / {"finetune": "finetuned"}.get(stage, stage) / "model.safetensors").read_bytes()
        assert (out / "model.safetensors").read_bytes() == trained, stage
