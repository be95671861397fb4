"""The seed spread: figures per run from evaluation details, their spread, and experiment names from `dvc exp show`."""

from editable_lm.seeds import experiment_revisions, markdown, run_figures, spread


def details(success: float, low: float, high: float) -> dict:
    """Evaluation details of one run, in the shape `stages/evaluate.py` writes (the parts `run_figures` reads)."""
    model = lambda s: {"ppl_unedited": 20.0, "ft": {"edit_success": s, "generality": 0.5}}  # noqa: E731
    diff = {"mean": success - 0.5, "low": low, "high": high, "median": 0.0, "n": 10}
    return {
        "finetuned": model(0.5), "editable": model(success),
        "differences": {"editable-finetuned": {"ft": {"edit_success": diff, "leakage": diff}}},
    }


def test_run_figures_reads_means_and_what_each_interval_says():
    figures = run_figures(details(0.9, 0.2, 0.6))
    assert figures["editable.ft.edit_success"] == 0.9 and figures["finetuned.ppl_unedited"] == 20.0
    assert figures["editable-finetuned.ft.edit_success"] == 0.9 - 0.5
    assert figures["editable-finetuned.ft.edit_success.says"] == "wins"
    # leakage is not among the compared figures (neighbourhood is); it must not be reported under its own name
    assert "editable-finetuned.ft.leakage" not in figures
    assert run_figures(details(0.4, -0.3, -0.1))["editable-finetuned.ft.edit_success.says"] == "loses"
    assert run_figures(details(0.5, -0.1, 0.1))["editable-finetuned.ft.edit_success.says"] == "no clear difference"


def test_spread_gives_mean_min_max_and_counts_outcomes():
    runs = {"a": run_figures(details(0.9, 0.2, 0.6)), "b": run_figures(details(0.6, -0.1, 0.3)),
            "c": run_figures(details(0.75, 0.1, 0.4))}
    s = spread(runs)
    assert s["editable.ft.edit_success"] == {"mean": 0.75, "min": 0.6, "max": 0.9}
    assert s["editable-finetuned.ft.edit_success.says"] == {"wins": 2, "loses": 0, "no clear difference": 1}
    table = markdown(runs, s, {"a": "split 0, train 0", "b": "split 0, train 1", "c": "split 0, train 2"})
    row = next(line for line in table.splitlines() if line.startswith("| editable.ft.edit_success |"))
    assert row == "| editable.ft.edit_success | 0.9 | 0.6 | 0.75 | 0.75 [0.6, 0.9] |"


def test_experiment_revisions_names_baselines_and_experiments():
    shown = [
        {"rev": "workspace", "name": None, "experiments": None},
        {"rev": "abc123", "name": "main", "experiments": [
            {"name": "seed1", "revs": [{"rev": "def456"}]},
            {"name": None, "revs": [{"rev": "ignored"}]},
        ]},
    ]
    assert experiment_revisions(shown) == {"abc123": "abc123", "main": "abc123", "seed1": "def456"}
