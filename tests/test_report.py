"""The Markdown report and its figures, from small hand-made metrics in the shapes the stages write.

The fixtures copy the shapes of a real smoke run's files (evaluate_details.json, tune.json, tune_grid.json,
sweep_details.json, sweep.csv, sequential.csv, batched.csv) with hand-chosen values, and go through the same
JSON / CSV round trip as the report stage (`read_json`, `read_csv`: CSV numbers come back as floats).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import matplotlib
import pytest

from editable_lm.report import MODELS, batched_table, direction, plot_tradeoff, with_interval, write_report
from editable_lm.storage import read_csv, read_json, write_csv, write_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_with_interval():
    """`mean [low, high]` to 3 significant digits, the mean alone without bounds, `-` when missing."""
    metrics = {"a": 0.123456, "b": 0.5, "b_low": 0.41234, "b_high": 0.6, "c": 12345.0}
    assert with_interval(metrics, "a") == "0.123"
    assert with_interval(metrics, "b") == "0.5 [0.412, 0.6]"
    assert with_interval(metrics, "c") == "1.23e+04"
    assert with_interval(metrics, "missing") == "-"


def paired(mean: float, low: float, high: float, n: int = 12) -> dict:
    return {"mean": mean, "low": low, "high": high, "median": mean, "n": n}


def test_direction_reads_the_interval_in_both_orientations():
    """Wins only when the whole interval is on the good side, loses when it is all on the bad side; an interval
    holding (or touching) zero is no clear difference. Lower is better when `higher_is_better` is False."""
    above, below, across = paired(0.2, 0.1, 0.3), paired(-0.2, -0.3, -0.1), paired(0.1, -0.1, 0.3)
    assert direction(above, True) == "wins" and direction(above, False) == "loses"
    assert direction(below, True) == "loses" and direction(below, False) == "wins"
    for holds_zero in (across, paired(-0.1, -0.3, 0.1), paired(0.1, 0.0, 0.2), paired(-0.1, -0.2, 0.0), paired(0, 0, 0)):
        assert direction(holds_zero, True) == direction(holds_zero, False) == "no clear difference", holds_zero


def summary(values: dict[str, float], n: dict[str, int] | None = None) -> dict:
    """A `summarize` result as evaluate_details.json holds it: each mean with bounds mean -/+ 0.1, a median
    (half the mean) for the heavy-tailed ones, `_n` where fewer edits had the key."""
    out = {}
    for key, value in values.items():
        out[key] = value
        if key in ("ppl_drawdown", "ppl_post", "kl"):
            out[f"{key}_median"] = value / 2
        out.update({f"{key}_low": value - 0.1, f"{key}_high": value + 0.1})
    out.update({f"{key}_n": count for key, count in (n or {}).items()})
    return out


FT = {  # each model's fixed-step edit, one mean per EDIT_METRICS key
    model: dict(zip(
        ("edit_success", "counterfactual_success", "generality", "leakage", "neighbourhood", "logp_new_pre", "logp_new_post",
         "ppl_drawdown", "ppl_post", "kl", "top1_agreement", "fluency", "edit_steps", "steps_to_success", "sec_per_edit"),
        values,
    ))
    for model, values in (
        ("base", (0.5, 0.6, 0.4, 0.3, 0.7, -20.0, -12.0, 0.05, 22.6, 0.02, 0.95, 5.2, 2.0, 1.5, 0.12)),
        ("finetuned", (0.6, 0.7, 0.5, 0.2, 0.8, -19.0, -11.0, 0.04, 21.0, 0.03, 0.9, 5.5, 2.0, 1.25, 0.11)),
        ("editable", (0.85, 0.75, 0.3, 0.25, 0.75, -18.0, -9.0, 0.06, 19.5, 0.02, 0.9, 5.1, 2.0, 1.0, 0.1)),
    )
}
COUNTS = {"generality": 8, "fluency": 4}  # generality needs probes; fluency is measured on the first 4 edits

# editable - finetuned, fixed-step edit: every compared metric, and what its interval says
FT_DIFFERENCES = {
    "edit_success": (paired(0.25, 0.1, 0.4), "the editable model is better"),
    "counterfactual_success": (paired(0.05, -0.05, 0.15), "the interval holds zero"),
    "generality": (paired(-0.2, -0.35, -0.05, n=8), "the editable model is worse"),  # higher is better, all below 0
    "neighbourhood": (paired(-0.05, -0.15, 0.0), "the interval holds zero"),  # touches zero
    "ppl_drawdown": (paired(0.02, 0.01, 0.03), "the editable model is worse"),  # lower is better, all above 0
    "ppl_post": (paired(-1.5, -2.0, -1.0), "the editable model is better"),  # lower is better, all below 0
    "kl": (paired(-0.01, -0.02, -0.005), "the editable model is better"),
    "top1_agreement": (paired(0.0, -0.02, 0.02), "the interval holds zero"),
    "fluency": (paired(-0.4, -0.7, -0.1, n=4), "the editable model is worse"),
}
EVALUATE = {
    "n_edits": 12,
    "fluency_prompts": ["The river flows", "Bread is baked"],
    "locality_tokens": 1000,
    **{
        model: {
            "edit_lr": lr, "ppl_unedited": ppl, "fluency_unedited": fluency,
            "ft": summary(FT[model], COUNTS),
            "ft_kl": summary({**FT[model], "edit_success": FT[model]["edit_success"] - 0.1, "kl": 0.01}, COUNTS),
        }
        for model, lr, ppl, fluency in (("base", 0.1, 21.5, 5.3), ("finetuned", 0.1, 20.2, 5.6), ("editable", 0.03, 18.0, 5.25))
    },
    "differences": {
        "editable-finetuned": {
            "ft": {**{key: d for key, (d, _) in FT_DIFFERENCES.items()}, "leakage": paired(0.05, -0.05, 0.15)},
            "ft_kl": {"edit_success": paired(0.25, 0.1, 0.4), "ppl_drawdown": paired(-0.01, -0.02, 0.01)},  # no fluency
        },
        "editable-base": {"ft": {"edit_success": paired(0.35, 0.2, 0.5), "ppl_drawdown": paired(0.01, -0.01, 0.03)}},
    },
}

# sweep.csv: (split, model, lr, steps, edit_success, drawdown mean, drawdown median). Test medians above the clip
# (100): base 2 (one of them inf), finetuned 1, editable none (its largest is 100 exactly: drawn); the validation
# rows' huge medians are not on the (test) figure.
SWEEP_GRID = [
    ("test", "base", 0.01, 1, 0.1, 0.001, 0.0005), ("test", "base", 0.1, 1, 0.5, 0.03, 0.02),
    ("test", "base", 1.0, 1, 0.9, 200.0, 150.0), ("test", "base", 0.01, 2, 0.2, 0.004, 0.002),
    ("test", "base", 0.1, 2, 0.8, 0.6, 0.5), ("test", "base", 1.0, 2, 1.0, math.inf, math.inf),
    ("test", "finetuned", 0.01, 1, 0.1, 0.002, 0.001), ("test", "finetuned", 0.1, 1, 0.4, 0.02, 0.01),
    ("test", "finetuned", 1.0, 1, 0.9, 20.0, 10.0), ("test", "finetuned", 0.01, 2, 0.3, 0.003, 0.002),
    ("test", "finetuned", 0.1, 2, 0.9, 0.08, 0.05), ("test", "finetuned", 1.0, 2, 1.0, 400.0, 300.0),
    ("test", "editable", 0.01, 1, 0.7, 0.002, 0.001), ("test", "editable", 0.1, 1, 0.9, 0.2, 0.1),
    ("test", "editable", 1.0, 1, 1.0, 50.0, 40.0), ("test", "editable", 0.01, 2, 0.95, 0.012, 0.006),
    ("test", "editable", 0.1, 2, 1.0, 0.5, 0.3), ("test", "editable", 1.0, 2, 1.0, 150.0, 100.0),
    ("val", "base", 0.1, 1, 0.9, 0.03, 0.02), ("val", "finetuned", 0.1, 2, 0.95, 0.07, 0.04),
    ("val", "editable", 0.01, 2, 1.0, 0.01, 0.005), ("val", "editable", 1.0, 1, 1.0, 9000.0, 5000.0),
    ("val", "editable", 1.0, 2, 1.0, 3e4, 1e4),
]
CHOSEN = {"base": "lr=0.1,steps=1", "finetuned": "lr=0.1,steps=2", "editable": "lr=0.01,steps=2"}
SWEEP_ROWS = [
    {"split": split, "model": model, "setting": f"lr={lr:g},steps={steps}", "lr": lr, "steps": steps,
     "edit_success": success, "edit_success_low": max(success - 0.1, 0), "edit_success_high": min(success + 0.1, 1),
     "ppl_drawdown": mean, "ppl_drawdown_median": median, "ppl_drawdown_low": mean / 2, "ppl_drawdown_high": mean * 2}
    for split, model, lr, steps, success, mean, median in SWEEP_GRID
]


def sweep_cell(split: str, model: str, setting: str) -> dict:
    (row,) = [r for r in SWEEP_ROWS if (r["split"], r["model"], r["setting"]) == (split, model, setting)]
    return {k: v for k, v in row.items() if k not in ("split", "model", "setting", "lr", "steps")}


SWEEP = {
    "n_edits": 8, "target_success": 0.9,
    **{model: {"matched": {"setting": CHOSEN[model], "val": sweep_cell("val", model, CHOSEN[model]),
                           "test": sweep_cell("test", model, CHOSEN[model])},
               "grid": {split: {r["setting"]: sweep_cell(split, model, r["setting"]) for r in SWEEP_ROWS
                                if (r["split"], r["model"]) == (split, model)} for split in ("val", "test")}}
       for model in MODELS},
    "differences": {"editable-finetuned": {"ppl_drawdown": paired(-0.068, -0.1, -0.03, n=8)},
                    "editable-base": {"ppl_drawdown": paired(-0.018, -0.05, 0.02, n=8)}},
}
TUNE = {"n_edits": 30, **{m: {"edit_lr": lr, "batch_lr": blr, "batch_steps": steps}
                          for m, lr, blr, steps in (("base", 0.1, 0.3, 2), ("finetuned", 0.1, 0.1, 5), ("editable", 0.03, 0.1, 2))}}


def tune_cell(success: float, drawdown: float) -> dict:
    return {"edit_success": success, "ppl_drawdown": drawdown, "ppl_drawdown_median": drawdown / 2, "kl": 0.01,
            "kl_median": 0.005, "top1_agreement": 0.99}


TUNE_GRID = {
    m: {"single": {"chosen": f"lr={TUNE[m]['edit_lr']:g},steps=2",
                   "grid": {"lr=0.01,steps=2": tune_cell(0.4, 0.001), f"lr={TUNE[m]['edit_lr']:g},steps=2": tune_cell(s, d)}},
        "batched": {"chosen": f"lr={TUNE[m]['batch_lr']:g},steps={TUNE[m]['batch_steps']}",
                    "grid": {"lr=0.01,steps=2": tune_cell(0.2, 0.002),
                             f"lr={TUNE[m]['batch_lr']:g},steps={TUNE[m]['batch_steps']}": tune_cell(bs, bd)}}}
    for m, s, d, bs, bd in (("base", 0.9, 0.05, 0.7, 0.2), ("finetuned", 0.95, 0.04, 0.8, 0.1), ("editable", 0.967, 0.0123, 0.8, 0.045))
}
SEQUENTIAL = [
    {"model": model, "n_edits": n, "retention": retention, "ppl_drawdown": drawdown, "ppl_post": 20 * (1 + drawdown),
     "kl": drawdown / 10, "top1_agreement": 1 - drawdown}
    for model, scale in zip(MODELS, (1.0, 0.5, 0.25))
    for n, retention, drawdown in ((1, 1.0, 0.01 * scale), (2, 0.5, 0.02 * scale), (5, 0.25 * (1 + scale), 0.08 * scale))
]
# batched.csv: the same 3 edits at batch sizes 1 (3 batches) and 3 (one batch); odd counts, so the median is the middle.
BATCHED_GRID = {
    "base": {1: ((1.0, 0.01), (0.0, 0.05), (1.0, 0.02)), 3: ((2 / 3, 0.3),)},
    "finetuned": {1: ((1.0, 0.02), (1.0, 0.01), (0.0, 0.03)), 3: ((1 / 3, 0.5),)},
    "editable": {1: ((1.0, 0.004), (1.0, 0.002), (1.0, 0.003)), 3: ((1.0, 0.01),)},
}
BATCHED = [
    {"model": model, "batch_size": size, "batch": index, "edit_success": success, "ppl_drawdown": drawdown,
     "ppl_post": 20 * (1 + drawdown), "kl": drawdown / 10, "top1_agreement": 1 - drawdown}
    for model, sizes in BATCHED_GRID.items() for size, batches in sizes.items()
    for index, (success, drawdown) in enumerate(batches)
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """The fixtures through the files the report stage reads, as it reads them."""
    root = tmp_path_factory.mktemp("metrics")
    out = {}
    for name, obj in (("evaluate", EVALUATE), ("tune", TUNE), ("tune_grid", TUNE_GRID), ("sweep", SWEEP)):
        write_json(root / f"{name}.json", obj)
        out[name] = read_json(root / f"{name}.json")
    for name, rows in (("sweep_rows", SWEEP_ROWS), ("sequential", SEQUENTIAL), ("batched", BATCHED)):
        write_csv(root / f"{name}.csv", rows)
        out[name] = read_csv(root / f"{name}.csv")
    return out


@pytest.fixture(scope="module")
def report(inputs, tmp_path_factory) -> tuple:
    """write_report on the fixtures: (the report's text, its figures folder, the output root)."""
    root = tmp_path_factory.mktemp("report")
    figures, out = root / "figures", root / "docs" / "report.md"
    write_report(inputs["evaluate"], inputs["tune"], inputs["tune_grid"], inputs["sweep"], inputs["sweep_rows"],
                 inputs["sequential"], inputs["batched"], figures=str(figures), out=str(out))
    return out.read_text(), figures, root


def verdict_of(text: str) -> str:
    start = text.index("**Verdict**")
    return text[start : text.index("\n## ", start)]


def section(verdict: str, procedure: str) -> list[str]:
    """The bullet sentences of one procedure's part of the verdict."""
    lines = verdict.split("\n")
    (start,) = [i for i, line in enumerate(lines) if line.endswith(f"(`{procedure}`):")]
    bullets = []
    for line in lines[start + 2 :]:
        if not line.startswith("- "):
            break
        bullets.append(line)
    return bullets


LABELS = {  # how the report names each compared metric (bold), from its METRICS table
    "edit_success": "edit success", "counterfactual_success": "counterfactual success (efficacy)",
    "generality": "generality (paraphrase)", "neighbourhood": "neighbourhood (1 − leakage)",
    "ppl_drawdown": "perplexity drawdown", "ppl_post": "post-edit perplexity", "kl": "KL(pre || post)",
    "top1_agreement": "top-1 agreement",
}


def test_verdict_has_a_sentence_per_paired_metric(report):
    """Per procedure, one sentence per compared metric with a paired difference (leakage, said as neighbourhood,
    has none of its own; ft_kl has no fluency pair): both models' means, the paired interval, the edit count and
    what the interval says, by each metric's orientation."""
    verdict = verdict_of(report[0])
    assert verdict.startswith("**Verdict** (editable − fine-tuned, paired over the same 12 held-out test edits")
    ft = section(verdict, "ft")
    assert len(ft) == len(FT_DIFFERENCES) == 9
    expected = {
        "edit_success": "0.85 against 0.6, paired +0.25 [+0.1, +0.4] over 12 edits: the editable model is better.",
        "counterfactual_success": "0.75 against 0.7, paired +0.05 [-0.05, +0.15] over 12 edits: the interval holds zero.",
        "generality": "0.3 against 0.5, paired -0.2 [-0.35, -0.05] over 8 edits: the editable model is worse.",
        "neighbourhood": "0.75 against 0.8, paired -0.05 [-0.15, +0] over 12 edits: the interval holds zero.",
        "ppl_drawdown": "0.06 against 0.04, paired +0.02 [+0.01, +0.03] over 12 edits: the editable model is worse.",
        "ppl_post": "19.5 against 21, paired -1.5 [-2, -1] over 12 edits: the editable model is better.",
        "kl": "0.02 against 0.03, paired -0.01 [-0.02, -0.005] over 12 edits: the editable model is better.",
        "top1_agreement": "0.9 against 0.9, paired +0 [-0.02, +0.02] over 12 edits: the interval holds zero.",
    }
    for key, tail in expected.items():
        assert [line for line in ft if line.startswith(f"- **{LABELS[key]}**")] == [f"- **{LABELS[key]}**: {tail}"], key
        assert FT_DIFFERENCES[key][1] in tail  # the table above agrees with the sentence
    (fluency,) = [line for line in ft if line.startswith("- **fluency")]
    assert fluency.endswith(": 5.1 against 5.5, paired -0.4 [-0.7, -0.1] over 4 edits: the editable model is worse.")
    assert not any("leakage**" in line for line in ft)
    ft_kl = section(verdict, "ft_kl")
    assert ft_kl == [
        "- **edit success**: 0.75 against 0.5, paired +0.25 [+0.1, +0.4] over 12 edits: the editable model is better.",
        "- **perplexity drawdown**: 0.06 against 0.04, paired -0.01 [-0.02, +0.01] over 12 edits: the interval holds zero.",
    ]
    assert "Before any edit, perplexity on the locality tokens is 21.5 (base), 20.2 (finetuned), 18 (editable) and " \
           "fluency 5.3 (base), 5.6 (finetuned), 5.25 (editable)." in verdict
    assert ("chosen on 8 validation edits as the lowest drawdown with success >= 0.9, read on 8 test edits): drawdown "
            "0.012 (editable, success 95%) against 0.08 (fine-tuned, success 90%), paired -0.068 [-0.1, -0.03].") in verdict
    # What "selectively" means, from the fixed-step outcomes
    assert "other sentences about the same person: generality (loses)" in verdict and "post-edit perplexity (wins)" in verdict
    assert "perplexity drawdown (loses)" in verdict and "neighbourhood (1 − leakage) (no clear difference)" in verdict


def test_write_report_tables(report):
    """The tuned settings with their validation figures, the field's table, every model x procedure with
    intervals, the paired differences, the sweep's matched settings, the many-edit tables."""
    text = report[0]
    assert "## Settings chosen on 30 validation edits (stage `tune`)" in text
    assert "| editable | 0.03 | 0.967 / 0.0123 | 0.1 x 2 | 0.8 / 0.045 |" in text
    assert "| finetuned | 0.1 | 0.95 / 0.04 | 0.1 x 5 | 0.8 / 0.1 |" in text
    assert "12 held-out test edits" in text
    # field table: edit success, efficacy, paraphrase, neighbourhood, drawdown, fluency, s / edit
    assert ("| editable | 0.85 [0.75, 0.95] | 0.75 [0.65, 0.85] | 0.3 [0.2, 0.4] | 0.75 [0.65, 0.85] | "
            "0.06 [-0.04, 0.16] | 5.1 [5, 5.2] | 0.1 [0, 0.2] |") in text
    assert "Generality is measured on the 8 edits that have probes" in text
    assert "fluency on the first 4 edits, from the prompts 'The river flows', 'Bread is baked'." in text
    assert "own unedited perplexity on the 1000 locality tokens: base 21.5, finetuned 20.2, editable 18;" in text
    # reliability table: rates, then drawdown (with its median, no interval), ppl_post, kl, fluency, steps, time
    assert ("| base | ft | 0.5 [0.4, 0.6] | 0.6 [0.5, 0.7] | 0.4 [0.3, 0.5] | 0.7 [0.6, 0.8] | 0.95 [0.85, 1.05] | "
            "0.05 [-0.05, 0.15] | 0.025 | 22.6 [22.5, 22.7] | 0.02 [-0.08, 0.12] | 5.2 [5.1, 5.3] | 1.5 [1.4, 1.6] | "
            "0.12 [0.02, 0.22] |") in text
    assert "| editable | ft_kl | 0.75 [0.65, 0.85] |" in text
    assert "| editable-finetuned | ft | generality | -0.2 [-0.35, -0.05] | -0.2 | 8 | loses |" in text
    assert "| editable-finetuned | ft | ppl_post | -1.5 [-2, -1] | -1.5 | 12 | wins |" in text
    assert "| editable-finetuned | ft | leakage | +0.05 [-0.05, +0.15] | +0.05 | 12 |  |" in text  # no orientation
    assert "| editable-base | ft | ppl_drawdown | +0.01 [-0.01, +0.03] | +0.01 | 12 | no clear difference |" in text
    assert "| editable | lr=0.01,steps=2 | 1 / 0.01 | 0.95 [0.85, 1] | 0.012 [0.006, 0.024] |" in text
    assert "| base | lr=0.1,steps=1 | 0.9 / 0.03 | 0.5 [0.4, 0.6] | 0.03 [0.015, 0.06] |" in text
    assert "editable-finetuned -0.068 [-0.1, -0.03]; editable-base -0.018 [-0.05, +0.02]" in text
    # sequential: each model's last checkpoint
    assert "| base | 5 | 0.5 | 0.08 |" in text and "| editable | 5 | 0.312 | 0.02 |" in text
    # batched: mean success / median drawdown per batch size, with each model's tuned batch lr x steps
    assert "| model | batch lr x steps | 1 at once | 3 at once |" in text
    assert "| base | 0.3 x 2 | 0.67 / 0.02 | 0.67 / 0.3 |" in text
    assert "| finetuned | 0.1 x 5 | 0.67 / 0.02 | 0.33 / 0.5 |" in text
    assert "| editable | 0.1 x 2 | 1.00 / 0.003 | 1.00 / 0.01 |" in text


def test_write_report_figures(report):
    """Three valid PNGs, linked relative to the report; nothing else left behind."""
    text, figures, root = report
    for name in ("reliability", "tradeoff", "sequential"):
        assert f"](../figures/{name}.png)" in text
        assert (figures / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in figures.iterdir()) == ["reliability.png", "sequential.png", "tradeoff.png"]
    assert sorted(p.name for p in root.iterdir()) == ["docs", "figures"]  # no temporary leftovers
    assert [p.name for p in (root / "docs").iterdir()] == ["report.md"]


SVG = "{http://www.w3.org/2000/svg}"


def test_tradeoff_counts_settings_beyond_the_clip(inputs, tmp_path):
    """Each model's panel title counts its test settings whose median drawdown is above the clip (100), inf
    included, validation rows never; those points are not drawn (their lr labels are missing), the others are.
    Drawn as SVG with text kept as text (matplotlib's own output option), so the titles can be read back."""
    path = tmp_path / "tradeoff.svg"
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        plot_tradeoff(inputs["sweep_rows"], CHOSEN, path)
    texts = ["".join(element.itertext()).strip() for element in ET.parse(path).getroot().iter(f"{SVG}text")]
    assert "base (2 settings > 100 not shown)" in texts
    assert "finetuned (1 setting > 100 not shown)" in texts
    assert "editable" in texts and not any(t.startswith("editable (") for t in texts)
    # lr labels next to the drawn points (x-axis ticks are mathtext, not these strings): lr=1 is drawn for
    # finetuned at 1 step (median 10) and for editable at 1 and 2 steps (40, and 100 on the clip), never for base
    labels = [t for t in texts if t in ("0.01", "0.1", "1")]
    assert labels.count("1") == 1 + 2
    assert labels.count("0.01") == labels.count("0.1") == 3 * 2  # every model, both step counts
    assert any(t.startswith("Edit strength on test edits") for t in texts)


def test_batched_table_median_of_an_even_number_of_batches():
    """Two batches per size: the median drawdown is the mean of the two middle values, 0.02 of 0.01 and 0.03."""
    rows = [{"model": m, "batch_size": 2.0, "batch": float(b), "edit_success": 1.0, "ppl_drawdown": d}
            for m in MODELS for b, d in ((0, 0.01), (1, 0.03))]
    assert batched_table(rows, TUNE)[2] == "| base | 0.3 x 2 | 1.00 / 0.02 |"


def test_editors_section_rows_and_pairing(inputs, tmp_path):
    """The papers' table: FT (base and fine-tuned), FT+KL, ENN, then ROME per edit, MEMIT per update (seconds per
    edit of its one update) and MEND, and a sentence per metric paired with ENN or FT."""
    editors = {
        "n_edits": 4, "layer": 12,
        "rome": {**summary({"edit_success": 0.75, "ppl_drawdown": 0.02, "sec_per_edit": 3.0}), "weights": ["w"],
                 "setting": {"layer": 12}, "grid": {"layer=6": {"edit_success": 0.5, "ppl_drawdown": 0.01},
                                                    "layer=12": {"edit_success": 1.0, "ppl_drawdown": 0.02}}},
        "memit": {"edit_success": 0.5, "ppl_drawdown": 0.04, "seconds": 8.0, "weights": ["a", "b"],
                  "setting": {"layer": 12, "lambda": 100.0}, "grid": {"layer=12,lambda=100": {"edit_success": 0.5, "ppl_drawdown": 0.04}}},
        "mend": {**summary({"edit_success": 0.5, "ppl_drawdown": 0.01, "sec_per_edit": 0.1}), "weights": ["w"],
                 "setting": {}, "grid": {"trained": {"edit_success": 0.5, "ppl_drawdown": 0.01}}},
        "differences": {"rome-enn": {"edit": {"edit_success": paired(-0.2, -0.3, -0.1), "ppl_drawdown": paired(0.01, -0.01, 0.03)}},
                        "mend-ft": {"edit": {"edit_success": paired(0.3, 0.1, 0.5)}}},
    }
    out = tmp_path / "report.md"
    write_report(inputs["evaluate"], inputs["tune"], inputs["tune_grid"], inputs["sweep"], inputs["sweep_rows"],
                 inputs["sequential"], inputs["batched"], figures=str(tmp_path / "figures"), out=str(out), editors=editors)
    text = out.read_text()
    rows = [line for line in text.split("## Editors")[1].splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0] for row in rows] == [
        "| FT (base model)", "| FT (fine-tuned model)", "| FT+KL (fine-tuned model)", "| ENN (editable model)",
        "| ROME (base model, layer 12)", "| MEMIT (base model, layer 12, lambda 100; all 4 edits in one update)",
        "| MEND (base model)"]
    assert rows[4].split(" | ")[1] == "0.75 [0.65, 0.85]"
    assert rows[5].split(" | ")[-1] == "2 |"  # 8 s for 4 edits
    assert "Paired over the same edits, mend-ft: edit success +0.3 [+0.1, +0.5] (wins)" in text
    assert "MEND (" not in text.split("chosen on validation edits")[1].split("|")[0]  # no setting to choose
    assert "edit success -0.2 [-0.3, -0.1] (loses)" in text
    assert "ROME layer 12 (layer=6: success 0.50, drawdown 0.01, layer=12: success 1.00, drawdown 0.02)" in text
    assert "perplexity drawdown +0.01 [-0.01, +0.03] (no clear difference)" in text
