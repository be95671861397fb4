"""The Markdown report and its figures, from small hand-made metrics."""

from __future__ import annotations

from editable_lm.report import MODELS, TABLE, drawdown_at_success, with_interval, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_with_interval():
    """`mean [low, high]` to 3 significant digits, the mean alone without bounds, `-` when missing."""
    metrics = {"a": 0.123456, "b": 0.5, "b_low": 0.41234, "b_high": 0.6, "c": 12345.0}
    assert with_interval(metrics, "a") == "0.123"
    assert with_interval(metrics, "b") == "0.5 [0.412, 0.6]"
    assert with_interval(metrics, "c") == "1.23e+04"
    assert with_interval(metrics, "missing") == "-"


SWEEP = [
    {"model": "base", "lr": 0.01, "steps": 1.0, "edit_success": 0.3, "ppl_drawdown": 0.001},  # cheapest, misses the target
    {"model": "base", "lr": 0.1, "steps": 2.0, "edit_success": 0.9, "ppl_drawdown": 0.2},
    {"model": "base", "lr": 0.03, "steps": 2.0, "edit_success": 0.5, "ppl_drawdown": 0.05},  # exactly at the target
    {"model": "finetuned", "lr": 0.1, "steps": 2.0, "edit_success": 0.4, "ppl_drawdown": 0.01},
    {"model": "editable", "lr": 0.01, "steps": 1.0, "edit_success": 0.8, "ppl_drawdown": 0.003},
    {"model": "editable", "lr": 0.1, "steps": 1.0, "edit_success": 1.0, "ppl_drawdown": 0.3},
]


def test_drawdown_at_success():
    """Lowest drawdown among one model's settings reaching the target (>=); None when none does."""
    assert drawdown_at_success(SWEEP, "base") == SWEEP[2]
    assert drawdown_at_success(SWEEP, "base", target=0.6) == SWEEP[1]
    assert drawdown_at_success(SWEEP, "base", target=0.95) is None
    assert drawdown_at_success(SWEEP, "finetuned") is None
    assert drawdown_at_success(SWEEP, "editable") == SWEEP[4]
    assert drawdown_at_success(SWEEP, "nobody") is None


def summary(value: float, skip: tuple[str, ...] = ()) -> dict:
    """Every table metric at `value` with bounds value -/+ 0.1, except `skip`."""
    out = {}
    for key in TABLE:
        if key not in skip:
            out.update({key: value, f"{key}_low": value - 0.1, f"{key}_high": value + 0.1})
    return out


EVALUATE = {
    "n_edits": 12,
    "base": {"ft": summary(0.5, skip=("generality",)), "ft_kl": summary(0.4)},
    "finetuned": {"ft": summary(0.6), "ft_kl": summary(0.55)},
    "editable": {"ft": summary(0.8), "ft_kl": summary(0.75)},
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
    write_report(EVALUATE, SWEEP, SEQUENTIAL, BATCHED, figures=str(figures), out=str(out))
    text = out.read_text()
    assert "12 held-out test edits" in text
    assert "| base | ft | 0.5 [0.4, 0.6] | 0.5 [0.4, 0.6] | - | 0.5 [0.4, 0.6] |" in text  # no generality
    assert "| editable | ft_kl | 0.75 [0.65, 0.85] |" in text
    assert "| base | lr=0.03, steps=2 | 0.5 | 0.05 |" in text
    assert "| finetuned | none reaches 0.5 | - | - |" in text
    assert "| editable | lr=0.01, steps=1 | 0.8 | 0.003 |" in text
    assert "| base | 4 | 0.5 | 0.08 | 0.75 | 0.02 |" in text
    assert "| editable | 4 | 0.312 | 0.02 | 0.75 | 0.02 |" in text
    for name in ("reliability", "tradeoff", "sequential"):
        assert f"](../figures/{name}.png)" in text
        assert (figures / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "figures"]  # no temporary leftovers
    assert [p.name for p in out.parent.iterdir()] == ["report.md"]
