"""Experiments with real DVC on the smoke configuration: `dvc exp run -S` for every key of params.yaml
(tests/test_queue.py: a queued grid, `dvc exp show`, `dvc metrics diff` and `dvc plots diff`).

"-S works for every key" is checked with one real experiment that sets every key at once to a
valid value other than the smoke run's: DVC must accept each override, check_params must accept
each value, every stage must rerun, and the experiment must record every value. One run instead of
one per key keeps this to a single pass through the pipeline.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from editable_lm.errors import EditLMError
from editable_lm.frontier import export

from smoke import ENV, SmokeRun, experiments, exp_params, flat, override, ran_stages, run

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
    exported_test = json.loads((tmp_path / "levers" / "every-key" / "evaluate_details.json").read_text())
    assert exported_test == json.loads((repo / "metrics/evaluate_details.json").read_text())
    assert (tmp_path / "levers" / "every-key" / "evaluate_edits.csv").read_bytes() == (repo / "metrics/evaluate_edits.csv").read_bytes()
    with pytest.raises(EditLMError, match="^no-such: no such DVC experiment"):
        export("no-such", tmp_path / "levers" / "no-such", repo)


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
