"""The Markdown report and its figures, from small hand-made metrics."""

from __future__ import annotations

from editable_lm.report import MODELS, TABLE, direction, with_interval, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_with_interval():
    """`mean [low, high]` to 3 significant digits, the mean alone without bounds, `-` when missing."""
    metrics = {"a": 0.123456, "b": 0.5, "b_low": 0.41234, "b_high": 0.6, "c": 12345.0}
    assert with_interval(metrics, "a") == "0.123"
    assert with_interval(metrics, "b") == "0.5 [0.412, 0.6]"
    assert with_interval(metrics, "c") == "1.23e+04"
    assert with_interval(metrics, "missing") == "-"


SWEEP = [
    {"model": "base", "lr": 0.01, "steps": 1.0, "edit_success": 0.3, "ppl_drawdown": 0.001},
    {"model": "base", "lr": 0.1, "steps": 2.0, "edit_success": 0.9, "ppl_drawdown": 0.2},
    {"model": "finetuned", "lr": 0.1, "steps": 2.0, "edit_success": 0.4, "ppl_drawdown": 0.01},
    {"model": "editable", "lr": 0.01, "steps": 1.0, "edit_success": 0.8, "ppl_drawdown": 0.003},
    {"model": "editable", "lr": 0.1, "steps": 1.0, "edit_success": 1.0, "ppl_drawdown": 0.3},
]


def paired(mean: float, low: float, high: float) -> dict:
    return {"mean": mean, "low": low, "high": high, "median": mean, "n": 12}


SWEEP_JSON = {
    "n_edits": 8, "target_success": 0.9,
    "base": {"matched": {"setting": "lr=0.1,steps=2", "edit_success": 0.9, "ppl_drawdown": 0.2}},
    "finetuned": {"matched": {"setting": "lr=0.1,steps=2", "edit_success": 0.4, "ppl_drawdown": 0.01}},
    "editable": {"matched": {"setting": "lr=0.1,steps=1", "edit_success": 1.0, "ppl_drawdown": 0.3,
                             "ppl_drawdown_low": 0.25, "ppl_drawdown_high": 0.35}},
    "differences": {"editable-finetuned": {"ppl_drawdown": paired(0.29, 0.2, 0.4)},
                    "editable-base": {"ppl_drawdown": paired(0.1, -0.05, 0.2)}},
}
TUNE = {"n_edits": 30, **{m: {"edit_lr": lr, "edit_success": 0.9, "ppl_drawdown": 0.01} for m, lr in zip(MODELS, (0.1, 0.1, 0.03))}}


def test_direction_reads_the_interval():
    """Better only when the whole interval is on the good side; lower is better for drawdown."""
    assert direction(paired(0.2, 0.1, 0.3), "up", "down") == "up"
    assert direction(paired(-0.2, -0.3, -0.1), "up", "down") == "down"
    assert direction(paired(0.1, -0.1, 0.3), "up", "down").startswith("no clear")
    assert direction(paired(-0.2, -0.3, -0.1), "more local", "less local", lower_is_better=True) == "more local"


def summary(value: float, skip: tuple[str, ...] = ()) -> dict:
    """Every table metric at `value` with bounds value -/+ 0.1, except `skip`."""
    out = {}
    for key in TABLE:
        if key not in skip:
            out.update({key: value, f"{key}_low": value - 0.1, f"{key}_high": value + 0.1})
    return out


EVALUATE = {
    "n_edits": 12,
    "locality_tokens": 1000,
    "base": {"ppl_unedited": 21.5, "ft": summary(0.5, skip=("generality",)), "ft_kl": summary(0.4)},
    "finetuned": {"ppl_unedited": 20.2, "ft": summary(0.6), "ft_kl": summary(0.55)},
    "editable": {"edit_lr": 0.03, "ppl_unedited": 20.5, "ft": summary(0.8), "ft_kl": summary(0.75)},
    "differences": {
        "editable-finetuned": {"ft": {"edit_success": paired(0.2, 0.1, 0.3), "ppl_drawdown": paired(-0.05, -0.08, -0.01)}},
        "editable-base": {"ft": {"edit_success": paired(0.3, -0.1, 0.5), "ppl_drawdown": paired(0.0, -0.02, 0.02)}},
    },
}
SEQUENTIAL = [
    {"model": model, "n_edits": float(n), "retention": retention, "ppl_drawdown": drawdown}
    for model, scale in zip(MODELS, (1.0, 0.5, 0.25))
    for n, retention, drawdown in ((1, 1.0, 0.01 * scale), (2, 0.5, 0.02 * scale), (4, 0.25 * (1 + scale), 0.08 * scale))
]
BATCHED = [
    {"model": model, "batch": float(b), "edit_success": success, "ppl_drawdown": drawdown}
    for model in MODELS
    for b, success, drawdown in ((0, 0.5, 0.01), (1, 1.0, 0.03))
]


def test_write_report(tmp_path):
    """report.md holds the table rows, the sweep and many-edit summaries; three valid PNGs are drawn."""
    figures, out = tmp_path / "figures", tmp_path / "docs" / "report.md"
    write_report(EVALUATE, TUNE, SWEEP_JSON, SWEEP, SEQUENTIAL, BATCHED, figures=str(figures), out=str(out))
    text = out.read_text()
    assert "12 held-out test edits" in text
    assert "| base | ft | 0.5 [0.4, 0.6] | 0.5 [0.4, 0.6] | - | 0.5 [0.4, 0.6] |" in text  # no generality
    assert "| editable | ft_kl | 0.75 [0.65, 0.85] |" in text
    assert "| base | lr=0.1,steps=2 | 0.9 | 0.2 |" in text
    assert "| editable | lr=0.1,steps=1 | 1 | 0.3 [0.25, 0.35] |" in text
    assert "| editable | 0.03 | 0.9 | 0.01 |" in text  # the tuned learning rate
    assert "own unedited perplexity on the 1000 locality tokens: base 21.5, finetuned 20.2, editable 20.5." in text
    assert "| editable-finetuned | ft | edit_success | +0.2 [+0.1, +0.3] | +0.2 |" in text
    assert "editable-base +0.1 [-0.05, +0.2]" in text
    verdict = text.split("\n")[4]
    assert verdict.startswith("**Verdict.** On 12 held-out test edits")
    assert "80% of edits for the editable model, 60% for the fine-tuned" in verdict
    assert "more reliable and more local than fine-tuning" in verdict
    # generality only where every model has it (the base model's edits here have no probes)
    assert verdict.endswith("What it costs: unedited perplexity on the locality tokens is 20.5 (editable), 20.2 (finetuned), "
                            "21.5 (base).")
    assert "| base | 4 | 0.5 | 0.08 | 0.75 | 0.02 |" in text
    assert "| editable | 4 | 0.312 | 0.02 | 0.75 | 0.02 |" in text
    for name in ("reliability", "tradeoff", "sequential"):
        assert f"](../figures/{name}.png)" in text
        assert (figures / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "figures"]  # no temporary leftovers
    assert [p.name for p in out.parent.iterdir()] == ["report.md"]
