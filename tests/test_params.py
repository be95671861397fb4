"""params.yaml loading and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from editable_lm.errors import ConfigError
from editable_lm.params import Params, load_params

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_file_is_refused(tmp_path, text):
    """An empty params file is a mistake, not 'all defaults' (which differ from the committed ones)."""
    with pytest.raises(ConfigError, match="params.yaml: empty params file"):
        load_params(write(tmp_path, text))


@pytest.mark.parametrize("text", ["train:\n", "train: {}\n", "data:\n  source: wiki-vital\ntrain:\n"])
def test_empty_section_is_refused(tmp_path, text):
    """`train:` with its keys commented out fails by name instead of silently taking defaults."""
    with pytest.raises(ConfigError, match="^train: empty section"):
        load_params(write(tmp_path, text))


def test_complete_requires_every_section(tmp_path):
    """check_params (`complete=True`) names the first missing section and the file."""
    path = write(tmp_path, "train:\n  steps: 7\n")
    assert load_params(path).train.steps == 7
    with pytest.raises(ConfigError, match=r"^run: section missing from .*params.yaml"):
        load_params(path, complete=True)
    assert load_params(REPO_PARAMS, complete=True) == load_params(REPO_PARAMS)


def test_duplicate_key_is_refused(tmp_path):
    """PyYAML keeps the last of two equal keys; the loader refuses them, naming file, line and key."""
    with pytest.raises(ConfigError, match=r"params.yaml:4: train.lr: duplicate key \(first given on line 2\)$"):
        load_params(write(tmp_path, "train:\n  lr: 1.0e-5\n  steps: 3\n  lr: 1.0e-3\n"))
    with pytest.raises(ConfigError, match=r"params.yaml:3: train: duplicate key"):
        load_params(write(tmp_path, "train:\n  lr: 1.0e-5\ntrain:\n  steps: 3\n"))


@pytest.mark.parametrize(
    ("text", "where"),
    [("train:\n  lr: [1\n", ":3:1: invalid YAML"), ("train:\n lr: 1\n  steps: 2\n", ":3:8: invalid YAML")],
)
def test_invalid_yaml_names_file_line_and_column(tmp_path, text, where):
    with pytest.raises(ConfigError) as info:
        load_params(write(tmp_path, text))
    assert str(info.value).startswith(f"{tmp_path / 'params.yaml'}{where}"), str(info.value)
    assert "\n" not in str(info.value)


def test_missing_keys_take_defaults(tmp_path):
    """Keys left out keep their defaults; given keys are used."""
    params = load_params(write(tmp_path, "train:\n  steps: 7\nreliability:\n  n_edits: 3\n"))
    assert params.train.steps == 7
    assert params.reliability.n_edits == 3
    assert params.train.lr == Params().train.lr
    assert params.data == Params().data


def test_missing_file(tmp_path):
    """A missing params file is a ConfigError naming the path."""
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("foo:\n  bar: 1\n", "foo"),
        ("train:\n  foo: 1\n", "train.foo"),
        ("train:\n  lr: -1\n", "train.lr"),
        ("train:\n  lr: 0\n", "train.lr"),
        ("evaluate:\n  edit_lr: -0.1\n", "evaluate.edit_lr"),
        ("data:\n  source: wikipedia-dump\n", "data.source"),
        ("train:\n  steps: abc\n", "train.steps"),
        ("train:\n  steps: 1.5\n", "train.steps"),
        ("train:\n  steps: true\n", "train.steps"),
        ("train:\n  lr: abc\n", "train.lr"),
        ("editable:\n  first_order: 1\n", "editable.first_order"),
        ("model:\n  name: 3\n", "model.name"),
        ("split:\n  val_frac: 0.5\n  test_frac: 0.5\n", "split.val_frac"),
        ("edit:\n  blocks: 0\n", "edit.blocks"),
        ("train:\n  lr: .inf\n", "train.lr"),
        ("train:\n  steps: '5'\n", "train.steps"),
        ("train: 5\n", "train"),
        ("sweep:\n  lrs: []\n", "sweep.lrs"),
        ("sweep:\n  lrs: [0.1, -1]\n", "sweep.lrs[1]"),
        ("sweep:\n  steps: 2\n", "sweep.steps"),
        ("model:\n  name: '  '\n", "model.name"),
        ("evaluate:\n  edit_steps: 1\n", "evaluate.edit_steps"),
    ],
)
def test_invalid_key_is_named(tmp_path, text, key):
    """Unknown sections/keys, bad values and wrong types fail with the dotted key first."""
    with pytest.raises(ConfigError) as info:
        load_params(write(tmp_path, text))
    assert str(info.value).startswith(key), str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  lr: -1\n", "train.lr: must be > 0, got -1.0"),
        ("train:\n  steps: 0\n", "train.steps: must be >= 1, got 0"),
        ("train:\n  steps: abc\n", "train.steps: expected int, got 'abc'"),
        ("train:\n  foo: 1\n", "train.foo: unknown key (known: seed, steps, lr, batch_size, seq_len, outer_blocks"),
        ("split:\n  val_frac: 0.5\n  test_frac: 0.5\n", "split.val_frac + split.test_frac: must be below 1"),
        ("evaluate:\n  edit_steps: 1\n", "evaluate.edit_steps: FT+KL needs at least 2 steps (or leave ft_kl out of editors.names)"),
        ("editors:\n  names: [until_success, rome]\n", "editors.names: must include ft (the edit every model is tuned for)"),
        ("editors:\n  names: [ft, memit, rome]\n", "editors.names: memit needs rome before it"),
        ("editors:\n  names: [ft, grace]\n", "editors.names: unknown editor 'grace' (choose from ft, ft_kl, until_success, rome, memit, mend)"),
        ("editors:\n  names: [ft, rome, ft]\n", "editors.names: lists an editor twice"),
        ("data:\n  source: nope\n", "data.source: unknown value 'nope' (choose from wiki-vital, "),
        ("train:\n  steps: 10\n  warmup_steps: 10\n", "train.warmup_steps: must be below train.steps (10), got 10"),
        ("editable:\n  loc_reference: other\n", "editable.loc_reference: Input should be 'self', 'base' or 'finetuned'"),
        ("editable:\n  cneigh: -1\n", "editable.cneigh: must be >= 0, got -1.0"),
    ],
)
def test_messages(tmp_path, text, message):
    """The one-line messages users see (test_pipeline pins the first through a stage script)."""
    with pytest.raises(ConfigError) as info:
        load_params(write(tmp_path, text))
    assert str(info.value).startswith(message), str(info.value)


def test_section_must_be_mapping(tmp_path):
    """A section that is not a mapping is rejected by name."""
    with pytest.raises(ConfigError, match="^train"):
        load_params(write(tmp_path, "train: 5\n"))


def test_yaml_exponent_strings_are_floats(tmp_path):
    """PyYAML reads 1e-3 as a string; float keys accept it, and ints are widened to float."""
    params = load_params(write(tmp_path, "train:\n  lr: 1e-3\neditable:\n  inner_lr: 2E-4\n  cbase: 2\n"))
    assert params.train.lr == pytest.approx(1e-3)
    assert isinstance(params.train.lr, float)
    assert params.editable.inner_lr == pytest.approx(2e-4)
    assert params.editable.cbase == 2.0 and isinstance(params.editable.cbase, float)


def test_zero_edit_lr_is_allowed(tmp_path):
    """evaluate.edit_lr may be 0 (a no-op edit), only negative values fail."""
    assert load_params(write(tmp_path, "evaluate:\n  edit_lr: 0\n")).evaluate.edit_lr == 0.0


@pytest.mark.parametrize("value", [".nan", "nan"])
def test_nan_learning_rate_is_rejected(tmp_path, value):
    """A NaN learning rate is not a positive number."""
    with pytest.raises(ConfigError, match="^train.lr"):
        load_params(write(tmp_path, f"train:\n  lr: {value}\n"))


def test_repository_params_load():
    """The repository's own params.yaml is valid and is what the pipeline runs with."""
    params = load_params(REPO_PARAMS)
    assert params.data.source == "wiki-vital"
    assert params.model.name == "smollm2-135m"
    assert params.edit.blocks >= 1
    assert params.train.steps >= 1 and params.train.lr > 0


def test_more_processes_than_passages_per_batch_is_refused(tmp_path):
    """Training shares each batch of passages among the ranks: run.nproc above train.batch_size names both."""
    assert load_params(write(tmp_path, "run:\n  nproc: 2\ntrain:\n  batch_size: 2\n")).run.nproc == 2
    with pytest.raises(ConfigError, match=r"^run.nproc: 3 processes but train.batch_size 2"):
        load_params(write(tmp_path, "run:\n  nproc: 3\ntrain:\n  batch_size: 2\n"))
    with pytest.raises(ConfigError, match=r"^run.nproc: must be >= 1, got 0"):
        load_params(write(tmp_path, "run:\n  nproc: 0\n"))
