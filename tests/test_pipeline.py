"""End to end: real `dvc repro` of the smoke configuration in a temporary copy of the repository."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from editable_lm.errors import EditLMError
from editable_lm.evaluation import COMPARED_METRICS, EDIT_METRICS
from smoke import SMOKE, SmokeRun, repro, run, set_params


@pytest.fixture(scope="module")
def repo(tmp_path_factory, smoke_run: SmokeRun) -> Path:
    """A git + DVC copy of the project with the smoke params, reproduced once (shared: conftest's `smoke_run`)."""
    ran = smoke_run.ran
    assert ran >= {"download", "base_model", "pairs", "split", "finetune", "editable", "mend", "tune", "evaluate", "sweep", "sequential", "report"}
    return smoke_run.copy(tmp_path_factory.mktemp("pipeline") / "editable-lm")


HEADLINE = ("edit_success", "generality", "neighbourhood", "ppl_drawdown", "ppl_post", "fluency")  # evaluate.json's
PROCEDURES = ("ft", "ft_kl", "until_success")


def test_metrics_have_every_key_and_are_finite(repo):
    """evaluate_details.json: every summary with its interval, each model at its tuned lr, every compared metric
    paired; evaluate.json: only the headline means, the same numbers; tune.json: the tuned settings."""
    details = json.loads((repo / "metrics" / "evaluate_details.json").read_text())
    n_edits, rel = SMOKE["reliability"]["n_edits"], SMOKE["reliability"]
    assert details["n_edits"] == n_edits
    assert len(details["fluency_prompts"]) == rel["n_fluency_prompts"] and all(details["fluency_prompts"])
    tuned = json.loads((repo / "metrics" / "tune.json").read_text())
    assert tuned["n_edits"] == SMOKE["tune"]["n_edits"]
    for model in ("base", "finetuned", "editable"):
        assert details[model]["edit_lr"] == tuned[model]["edit_lr"] in SMOKE["sweep"]["lrs"]
        assert tuned[model]["batch_lr"] in SMOKE["sweep"]["lrs"] and tuned[model]["batch_steps"] in SMOKE["tune"]["batch_steps"]
        assert 1 < details[model]["ppl_unedited"] < math.inf and details[model]["fluency_unedited"] >= 0
        for procedure in PROCEDURES:
            values = details[model][procedure]
            # generality needs probes, which a 3-edit sample may lack, steps_to_success a success
            assert set(EDIT_METRICS) - {"generality", "steps_to_success"} <= set(values)
            assert all(math.isfinite(v) for v in values.values())
            assert values["edit_success_low"] <= values["edit_success"] <= values["edit_success_high"]
            assert values["neighbourhood"] == pytest.approx(1 - values["leakage"])
            assert values["fluency_n"] == rel["n_fluency_edits"] < n_edits  # fluency on the first edits only
    for comparison in ("editable-finetuned", "editable-base"):
        for procedure in PROCEDURES:
            paired = details["differences"][comparison][procedure]
            assert set(COMPARED_METRICS) - {"generality"} <= set(paired) <= set(COMPARED_METRICS)
            for key, d in paired.items():
                assert d["low"] <= d["mean"] <= d["high"], (comparison, procedure, key)
            assert paired["edit_success"]["n"] == n_edits and paired["fluency"]["n"] == rel["n_fluency_edits"]
    # The headline: the same numbers, means only
    headline = json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert headline == {
        "n_edits": n_edits,
        **{m: {"ppl_unedited": details[m]["ppl_unedited"], "fluency_unedited": details[m]["fluency_unedited"],
               **{p: {k: details[m][p][k] for k in HEADLINE if k in details[m][p]} for p in PROCEDURES}}
           for m in ("base", "finetuned", "editable")},
        "editable-finetuned": {p: {k: d["mean"] for k, d in details["differences"]["editable-finetuned"][p].items() if k in HEADLINE}
                               for p in PROCEDURES},
    }
    rows = (repo / "metrics" / "evaluate_edits.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 3 * n_edits


def numbers(tree: dict, prefix: str = "") -> dict:
    """A metrics file's leaves as {"a.b.c": value}."""
    out = {}
    for key, value in tree.items():
        out.update(numbers(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def test_declared_metrics_are_headline_numbers(repo):
    """`dvc metrics show` reads only headline numbers: no bounds, medians, counts, grids or paired-difference
    records (those are in the *_details.json and tune_grid.json outputs), and nothing but numbers."""
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    files = shown[""]["data"]
    assert set(files) == {"dvclive/finetune/metrics.json", "dvclive/editable/metrics.json", "dvclive/mend/metrics.json",
                          "metrics/tune.json", "metrics/validate.json",
                          "metrics/evaluate.json", "metrics/sweep.json", "metrics/sequential.json", "metrics/editors.json"}
    for name, content in files.items():
        leaves = numbers(content["data"])
        assert leaves, name
        for key, value in leaves.items():
            assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, key, value)
            assert not key.endswith(("_low", "_high", "_median", "_n")), (name, key)
            assert not {"grid", "differences", "mean", "low", "high", "matched"} & set(key.split(".")), (name, key)
    leaves = numbers(files["metrics/evaluate.json"]["data"])
    assert "editable-finetuned.ft.edit_success" in leaves and "base.ft.ppl_post" in leaves
    assert f"editable.after_{SMOKE['sequential']['n_edits']}.retention" in numbers(files["metrics/sequential.json"]["data"])
    assert "train.loss_base" in numbers(files["dvclive/finetune/metrics.json"]["data"])
    editors = set(numbers(files["metrics/editors.json"]["data"]))
    assert {"rome.edit_success", "memit.edit_success", "mend.edit_success", "rome-enn.edit_success", "mend-enn.edit_success"} <= editors
    assert not any(key.startswith(("rome-ft.", "mend-ft.")) for key in editors)  # the FT pairings: details only
    assert "train.loss_edit" in numbers(files["dvclive/mend/metrics.json"]["data"])
    for name in ("evaluate_details.json", "sweep_details.json", "tune_grid.json", "editors_details.json",
                 "validate_details.json"):
        assert (repo / "metrics" / name).is_file() and name not in json.dumps(files)  # plain outputs, not metrics


def test_report_and_figures(repo):
    report = (repo / "metrics" / "report.md").read_text()
    for model in ("base", "finetuned", "editable"):
        assert f"| {model} | ft |" in report and f"| {model} | ft_kl |" in report
    for figure in ("reliability", "tradeoff", "sequential"):
        png = repo / "metrics" / "figures" / f"{figure}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figures/{figure}.png" in report
    sweep = (repo / "metrics" / "sweep.csv").read_text().splitlines()
    assert len(sweep) == 1 + 2 * 3 * len(SMOKE["sweep"]["lrs"]) * len(SMOKE["sweep"]["steps"])  # val and test


def test_validate_stage_and_the_frontier(repo, tmp_path):
    """The validate stage reads validation edits (its own count) with ft at the tuned lrs; the frontier's table
    and figure come from its details, one row per pilot folder; a folder without them is a one-line error."""
    details = json.loads((repo / "metrics" / "validate_details.json").read_text())
    tuned = json.loads((repo / "metrics" / "tune.json").read_text())
    assert details["n_edits"] == SMOKE["validation"]["n_edits"]
    for model in ("base", "finetuned", "editable"):
        assert details[model]["edit_lr"] == tuned[model]["edit_lr"] and set(details[model]) >= {"ft", "ppl_unedited"}
        assert "edit_success_n" not in details[model]["ft"]  # every edit measured (summarize adds _n otherwise)
    paired = details["differences"]["editable-finetuned"]["ft"]
    assert paired["edit_success"]["n"] == SMOKE["validation"]["n_edits"]

    worse = json.loads(json.dumps(details))
    worse["editable"]["ppl_unedited"] = 2 * details["finetuned"]["ppl_unedited"]
    for name, content in (("as-run", details), ("twice-the-ppl", worse)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "validate_details.json").write_text(json.dumps(content))
    grid = json.loads((repo / "metrics" / "tune_grid.json").read_text())
    (tmp_path / "as-run" / "tune_grid.json").write_text(json.dumps(grid))  # the other pilot has none: "-"
    batched = {label: grid[label]["batched"]["grid"][grid[label]["batched"]["chosen"]]["edit_success"]
               for label in ("editable", "finetuned")}
    out = tmp_path / "out"
    run([sys.executable, "-m", "editable_lm.frontier", str(tmp_path / "as-run"), str(tmp_path / "twice-the-ppl"),
         "--out", str(out)], repo)
    rows = (out / "frontier.md").read_text().splitlines()
    ratio = details["editable"]["ppl_unedited"] / details["finetuned"]["ppl_unedited"]
    assert len(rows) == 4 and rows[2].startswith("| as-run |") and f"({ratio:.3g})" in rows[2]
    assert "(2) |" in rows[3] and f"{paired['edit_success']['mean']:+.2f}" in rows[2]
    ed, ft = details["editable"]["ft"], details["finetuned"]["ft"]
    met = sum([ratio <= 1.1, ed["edit_success"] >= 0.95, ed["ppl_post_median"] <= ft["ppl_post_median"],
               paired.get("generality", {"high": -1})["high"] >= 0,  # none of 3 smoke edits may have a probe
               paired.get("leakage", {"low": 1})["low"] <= 0])
    assert rows[2].endswith(f"| {ed['ppl_post_median']:.3g} / {ft['ppl_post_median']:.3g} | "
                            f"{batched['editable']:.2f} / {batched['finetuned']:.2f} | {met} of 5 |")
    assert rows[3].endswith(f" | - | {met - (ratio <= 1.1)} of 5 |")  # twice the perplexity: the ratio missed
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    failed = run([sys.executable, "-m", "editable_lm.frontier", str(tmp_path), "--out", str(out)], repo, check=False)
    assert failed.returncode == 1 and failed.stderr.strip() == (
        f"error: {tmp_path / 'validate_details.json'}: no validation figures (run the validate stage, or --export the "
        "experiment)")
    # --test: the same table from the test figures (stage evaluate), beside the validation one
    test = json.loads((repo / "metrics" / "evaluate_details.json").read_text())
    (tmp_path / "as-run" / "evaluate_details.json").write_text(json.dumps(test))
    run([sys.executable, "-m", "editable_lm.frontier", "--test", str(tmp_path / "as-run"), "--out", str(out)], repo)
    test_rows = (out / "test.md").read_text().splitlines()
    test_ratio = test["editable"]["ppl_unedited"] / test["finetuned"]["ppl_unedited"]
    assert len(test_rows) == 3 and f"({test_ratio:.3g})" in test_rows[2] and test_ratio != ratio
    assert (out / "frontier.md").read_text().splitlines() == rows and (out / "test.png").is_file()
    failed = run([sys.executable, "-m", "editable_lm.frontier", "--test", str(tmp_path / "twice-the-ppl"), "--out",
                  str(out)], repo, check=False)
    assert failed.returncode == 1 and failed.stderr.strip().endswith(
        "evaluate_details.json: no test figures (run the evaluate stage, or --export the experiment)")
    # --against: paired across two runs' test edits. A run against itself differs by exactly zero; against its own
    # fine-tuned model it gives the evaluate stage's own paired differences (the same rows, the same bootstrap)
    from editable_lm.frontier import ACROSS, across

    edits_csv = (repo / "metrics" / "evaluate_edits.csv").read_text()
    (tmp_path / "as-run" / "evaluate_edits.csv").write_text(edits_csv)
    run([sys.executable, "-m", "editable_lm.frontier", "--test", str(tmp_path / "as-run"), "--against",
         str(tmp_path / "as-run"), "--out", str(out)], repo)
    assert (out / "against.md").read_text().splitlines()[2].startswith("| as-run | +0 [+0, +0] |")
    used = yaml.safe_load((repo / "params.yaml").read_text())  # the smoke run's params, whole
    pairs = across(tmp_path / "as-run", tmp_path / "as-run", used["reliability"]["n_bootstrap"], used["evaluate"]["seed"])
    for key in ACROSS:
        assert pairs["run editable-reference editable"][key]["mean"] == 0
        assert pairs["run editable-reference finetuned"][key] == pytest.approx(test["differences"]["editable-finetuned"]["ft"][key])
    header, *lines = edits_csv.splitlines()
    column = header.split(",").index("edit_id")
    first = lines[0].split(",")[column]

    def renamed(line):  # the first edit gets an id the other run does not have
        cells = line.split(",")
        cells[column] = str(int(float(first)) + 10**6) if cells[column] == first else cells[column]
        return ",".join(cells)

    (tmp_path / "twice-the-ppl" / "evaluate_edits.csv").write_text("\n".join([header, *map(renamed, lines)]) + "\n")
    with pytest.raises(EditLMError, match="not the same test edits"):
        across(tmp_path / "as-run", tmp_path / "twice-the-ppl")


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
    # The sweep sets its own learning rates, so it does not rerun; the editors stage pairs ROME with evaluate's rows.
    assert ran == {"check_params", "evaluate", "sequential", "editors", "report"}


def test_sweep_setting_retrains_nothing(repo):
    set_params(repo, sweep={"steps": [2]})
    ran, _ = repro(repo)
    assert ran == {"check_params", "sweep", "report"}
    # The rates tune chooses from: tuning reruns, training does not; the stages that read tune.json rerun only if
    # its choices changed (the tune grid is a separate output).
    chosen = (repo / "metrics" / "tune.json").read_text()
    set_params(repo, sweep={"lrs": [0.01, 0.05]})
    ran, _ = repro(repo)
    readers = {"validate", "evaluate", "sequential", "editors"} if (repo / "metrics" / "tune.json").read_text() != chosen else set()
    assert ran == {"check_params", "tune", "sweep", "report"} | readers


def test_split_seed_reruns_split_and_after(repo):
    """A new split seed reruns split (not the data stages before it), whose new outputs make every stage that reads
    the split stale (`dvc status`; DVC then reruns them and what reads their outputs, as the every-key experiment
    of test_experiments does: run here, that would be a second pass through the pipeline)."""
    before = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["split"]["outs"]
    set_params(repo, split={"seed": 1})
    ran, _ = repro(repo, "split")
    assert ran == {"check_params", "split"}
    assert yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["split"]["outs"] != before
    stale = set(json.loads(run(["dvc", "status", "--json"], repo).stdout))
    assert stale == {"finetune", "editable", "mend", "tune", "validate", "evaluate", "sweep", "sequential",
                     "layer_stats", "editors"}


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


def test_validate_needs_passages_for_its_fluency_prompts(repo, tmp_path):
    """More fluency prompts than the validation passages beyond the perplexity ones: one line, nothing written."""
    (tmp_path / "p.yaml").write_text((repo / "params.yaml").read_text().replace(
        f"n_fluency_prompts: {SMOKE['reliability']['n_fluency_prompts']}", "n_fluency_prompts: 100000"))
    models = [f"--{m}=models/{m}" for m in ("base", "finetuned", "editable")]
    result = run([sys.executable, "stages/validate.py", f"--params={tmp_path / 'p.yaml'}", "--split=data/split",
                  "--tuned=metrics/tune.json", *models, f"--metrics={tmp_path / 'v.json'}",
                  f"--details={tmp_path / 'vd.json'}"], repo, check=False)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: reliability.n_fluency_prompts: 100000 prompts wanted beyond the "
                           f"{SMOKE['validation']['n_ppl_passages']} validation passages"), line
    assert not (tmp_path / "v.json").exists() and not (tmp_path / "vd.json").exists()


def test_missing_input_is_a_clear_error(repo, tmp_path):
    result = run(
        [sys.executable, "stages/pairs.py", "--passages", str(tmp_path / "none.jsonl"), "--corpus", "corpus",
         "--base", "models/base", "--out", str(tmp_path / "p.jsonl")],
        repo, check=False,
    )
    assert result.returncode == 1
    assert "none.jsonl: file not found" in result.stderr
    assert not (tmp_path / "p.jsonl").exists()


SCRAMBLED = {  # test-split files, and what each row becomes: nothing of the held-out test data survives
    "pairs_test.jsonl": lambda row: {**row, "prefix": "Nothing to see here:", "new_name": "Zork Quux"},
    "passages_test.jsonl": lambda row: {**row, "text": f"Zork quux frobnicates the blorb {row['id']} times, said nobody."},
}


def outputs(directory: Path) -> dict[str, bytes]:
    """Every file under a stage's output directory, by relative path."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def untimed(tree):
    """A metrics tree without its seconds (`sec_per_edit*`): the only figures that differ between two runs."""
    if isinstance(tree, dict):
        return {k: untimed(v) for k, v in tree.items() if not k.startswith("sec_per_edit")}
    return tree


def test_test_data_never_reaches_tuning_or_training(smoke_run: SmokeRun, tmp_path):
    """Scrambled test edits and test passages change neither the settings tuned on validation edits (nor their
    validation grid) nor the trained models (weights, learned inner rates, every file)."""
    repo = smoke_run.copy(tmp_path / "editable-lm")
    scrambled = tmp_path / "split"
    scrambled.mkdir()
    for file in (repo / "data" / "split").iterdir():
        rows = [json.loads(line) for line in file.read_text().splitlines()]
        if file.name in SCRAMBLED:
            assert rows, file.name  # something to scramble
            rows = [SCRAMBLED[file.name](row) for row in rows]
        (scrambled / file.name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    for name in SCRAMBLED:
        assert (scrambled / name).read_text() != (repo / "data" / "split" / name).read_text()
    models = [f"--{m}={repo / 'models' / m}" for m in ("base", "finetuned", "editable")]
    run([sys.executable, "stages/tune.py", f"--split={scrambled}", *models,
         f"--out={tmp_path / 'tune.json'}", f"--grid={tmp_path / 'tune_grid.json'}"], repo)
    for name in ("tune.json", "tune_grid.json"):
        assert json.loads((tmp_path / name).read_text()) == json.loads((repo / "metrics" / name).read_text()), name
    # The sweep reads test edits, but chooses each model's matched setting on validation edits only.
    run([sys.executable, "stages/sweep.py", f"--split={scrambled}", *models, f"--metrics={tmp_path / 'sweep.json'}",
         f"--details={tmp_path / 'sweep_details.json'}", f"--rows={tmp_path / 'sweep.csv'}"], repo)
    swept, committed = (json.loads(path.read_text()) for path in (tmp_path / "sweep_details.json",
                                                                   repo / "metrics" / "sweep_details.json"))
    for m in ("base", "finetuned", "editable"):
        assert swept[m]["matched"]["setting"] == committed[m]["matched"]["setting"], m
        assert swept[m]["grid"]["val"] == committed[m]["grid"]["val"], m
    assert any(swept[m]["grid"]["test"] != committed[m]["grid"]["test"] for m in ("base", "finetuned", "editable"))
    # The levers' pilots measure on validation edits only: the same figures
    run([sys.executable, "stages/validate.py", f"--split={scrambled}", "--tuned=metrics/tune.json", *models,
         f"--metrics={tmp_path / 'validate.json'}", f"--details={tmp_path / 'validate_details.json'}"], repo)
    for name in ("validate.json", "validate_details.json"):
        assert untimed(json.loads((tmp_path / name).read_text())) == untimed(json.loads((repo / "metrics" / name).read_text()))
    for stage, model in (("finetune", "finetuned"), ("editable", "editable")):
        out = tmp_path / stage
        reference = ["--finetuned=models/finetuned"] if stage == "editable" else []
        run([sys.executable, f"stages/{stage}.py", "--base=models/base", *reference, f"--split={scrambled}", f"--out={out}",
             f"--live={tmp_path / 'live' / stage}", f"--resume-dir={tmp_path / 'ckpt' / stage}"], repo)
        trained = outputs(repo / "models" / model)
        assert "model.safetensors" in trained
        assert outputs(out) == trained, stage
