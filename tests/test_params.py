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


def test_empty_file_gives_defaults(tmp_path):
    """An empty params.yaml is all defaults."""
    assert load_params(write(tmp_path, "")) == Params()


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
    ],
)
def test_invalid_key_is_named(tmp_path, text, key):
    """Unknown sections/keys, bad values and wrong types fail with the dotted key first."""
    with pytest.raises(ConfigError) as info:
        load_params(write(tmp_path, text))
    assert str(info.value).startswith(key), str(info.value)


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
