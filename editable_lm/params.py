"""Pipeline parameters: one frozen dataclass per `params.yaml` section, validated on load."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from editable_lm.errors import ConfigError

DATA_SOURCES = ("wiki-vital", "wikitext-103-raw-v1", "wikitext-2-raw-v1")


@dataclass(frozen=True)
class DataParams:
    source: str = "wiki-vital"
    max_articles: int = 0  # 0 keeps every article
    min_words: int = 8  # paragraphs shorter than this are dropped

    def check(self) -> None:
        _choice("data.source", self.source, DATA_SOURCES)
        _at_least("data.max_articles", self.max_articles, 0)
        _at_least("data.min_words", self.min_words, 1)


@dataclass(frozen=True)
class ModelParams:
    name: str = "smollm2-135m"  # offline default, a tiny-random-* smoke model, a hub id or a local path

    def check(self) -> None:
        if not self.name.strip():
            raise ConfigError("model.name: must not be empty")


@dataclass(frozen=True)
class PairsParams:
    seed: int = 0
    max_per_article: int = 4
    context_sentences: int = 2  # preceding sentences kept as context
    n_process: int = 2  # spaCy worker processes
    max_probes: int = 3  # generality probes kept per pair

    def check(self) -> None:
        _at_least("pairs.max_probes", self.max_probes, 0)
        _at_least("pairs.n_process", self.n_process, 1)
        _at_least("pairs.max_per_article", self.max_per_article, 1)
        _at_least("pairs.context_sentences", self.context_sentences, 0)


@dataclass(frozen=True)
class SplitParams:
    seed: int = 0
    val_frac: float = 0.1
    test_frac: float = 0.1

    def check(self) -> None:
        for key in ("val_frac", "test_frac"):
            value = getattr(self, key)
            if not 0 < value < 1:
                raise ConfigError(f"split.{key}: must be between 0 and 1, got {value}")
        if self.val_frac + self.test_frac >= 1:
            raise ConfigError("split.val_frac + split.test_frac: must be below 1")


@dataclass(frozen=True)
class EditParams:
    """Which weights an edit may touch, shared by training and evaluation."""

    blocks: int = 3  # the top `blocks` transformer blocks ...
    module: str = "mlp"  # ... and, inside them, the submodule with this name

    def check(self) -> None:
        _at_least("edit.blocks", self.blocks, 1)
        if not self.module.strip():
            raise ConfigError("edit.module: must not be empty")


@dataclass(frozen=True)
class TrainParams:
    """Shared by the fine-tuned baseline and the editable model, so both get the same budget."""

    seed: int = 0
    steps: int = 100
    lr: float = 1e-5
    batch_size: int = 2
    seq_len: int = 64
    outer_blocks: int = 6  # only the top blocks are trained (0 trains every block)

    def check(self) -> None:
        _at_least("train.steps", self.steps, 1)
        _positive("train.lr", self.lr)
        _at_least("train.batch_size", self.batch_size, 1)
        _at_least("train.seq_len", self.seq_len, 8)
        _at_least("train.outer_blocks", self.outer_blocks, 0)


@dataclass(frozen=True)
class EditableParams:
    inner_steps: int = 2
    inner_lr: float = 3e-2
    cbase: float = 1.0
    cedit: float = 1.0
    cloc: float = 1.0
    first_order: bool = False
    learn_lr: bool = False  # learn one inner learning rate per edited tensor
    lr_lr: float = 1e-4  # Adam's learning rate for those inner learning rates

    def check(self) -> None:
        _at_least("editable.inner_steps", self.inner_steps, 1)
        _positive("editable.inner_lr", self.inner_lr)
        _positive("editable.lr_lr", self.lr_lr)
        for key in ("cbase", "cedit", "cloc"):
            _at_least(f"editable.{key}", getattr(self, key), 0)


@dataclass(frozen=True)
class EvaluateParams:
    """The edit procedure and held-out samples, shared by every evaluation stage."""

    seed: int = 0
    edit_steps: int = 2
    edit_lr: float = 3e-2
    kl_weight: float = 1.0  # FT+KL: weight of KL(pre || post) on the locality sample
    n_loc_passages: int = 2  # FT+KL locality sample (validation passages)
    n_ppl_passages: int = 8  # held-out test passages for perplexity, KL and agreement
    seq_len: int = 64

    def check(self) -> None:
        _at_least("evaluate.edit_steps", self.edit_steps, 1)
        _at_least("evaluate.edit_lr", self.edit_lr, 0)
        _at_least("evaluate.kl_weight", self.kl_weight, 0)
        _at_least("evaluate.n_loc_passages", self.n_loc_passages, 1)
        _at_least("evaluate.n_ppl_passages", self.n_ppl_passages, 1)
        _at_least("evaluate.seq_len", self.seq_len, 8)
        if self.kl_weight > 0 and self.edit_steps < 2:
            # KL(pre || post) has zero gradient at the unedited weights: one step would be plain FT.
            raise ConfigError("evaluate.edit_steps: FT+KL needs at least 2 steps (or evaluate.kl_weight: 0)")


@dataclass(frozen=True)
class ReliabilityParams:
    """One edit at a time: reliability, generality, locality and leakage, with intervals."""

    n_edits: int = 30
    n_leak_probes: int = 5  # sentences about other people checked for the new name
    n_bootstrap: int = 1000

    def check(self) -> None:
        _at_least("reliability.n_edits", self.n_edits, 1)
        _at_least("reliability.n_leak_probes", self.n_leak_probes, 0)
        _at_least("reliability.n_bootstrap", self.n_bootstrap, 10)


@dataclass(frozen=True)
class SweepParams:
    """Edit strength: every (lr, steps) pair, to compare drawdown at matched success."""

    n_edits: int = 10
    lrs: tuple[float, ...] = (0.01, 0.03, 0.1)
    steps: tuple[int, ...] = (1, 2)

    def check(self) -> None:
        _at_least("sweep.n_edits", self.n_edits, 1)
        for lr in self.lrs:
            _at_least("sweep.lrs", lr, 0)
        for steps in self.steps:
            _at_least("sweep.steps", steps, 1)
        if not self.lrs or not self.steps:
            raise ConfigError("sweep.lrs, sweep.steps: must not be empty")


@dataclass(frozen=True)
class SequentialParams:
    """Many edits: one after another without resetting, and all at once in batches."""

    n_edits: int = 100
    batch_size: int = 10
    n_batches: int = 4  # batched edits use the first batch_size * n_batches of the edits

    def check(self) -> None:
        _at_least("sequential.n_edits", self.n_edits, 1)
        _at_least("sequential.batch_size", self.batch_size, 1)
        _at_least("sequential.n_batches", self.n_batches, 1)


@dataclass(frozen=True)
class Params:
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    pairs: PairsParams = PairsParams()
    split: SplitParams = SplitParams()
    edit: EditParams = EditParams()
    train: TrainParams = TrainParams()
    editable: EditableParams = EditableParams()
    evaluate: EvaluateParams = EvaluateParams()
    reliability: ReliabilityParams = ReliabilityParams()
    sweep: SweepParams = SweepParams()
    sequential: SequentialParams = SequentialParams()


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate `params.yaml`; a missing section takes its defaults."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    return parse_params(raw)


def parse_params(raw: dict) -> Params:
    """Build `Params` from a nested dict, naming the first unknown or invalid key."""
    sections = {f.name: f.type for f in dataclasses.fields(Params)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown params section (known: {', '.join(sections)})")
    built = {}
    for field in dataclasses.fields(Params):
        cls = field.default.__class__
        values = raw.get(field.name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{field.name}: expected a mapping")
        built[field.name] = _build_section(field.name, cls, values)
    return Params(**built)


def _build_section(section: str, cls: type, values: dict):
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown key (known: {', '.join(known)})")
        kwargs[key] = _coerce(f"{section}.{key}", value, type(known[key].default), known[key].default)
    params = cls(**kwargs)
    params.check()
    return params


def _coerce(key: str, value, kind: type, default=None):
    # YAML reads 1e-3 as a string; bool is a subclass of int, so check it first.
    if kind is tuple:
        if isinstance(value, list):
            return tuple(_coerce(key, item, type(default[0])) for item in value)
    elif kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if not isinstance(value, bool):
            try:
                return float(value)
            except (TypeError, ValueError):
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {'list' if kind is tuple else kind.__name__}, got {value!r}")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: unknown value {value!r} (choose from {', '.join(choices)})")


def _at_least(key: str, value: float, low: float) -> None:
    if not (math.isfinite(value) and value >= low):
        raise ConfigError(f"{key}: must be >= {low}, got {value}")


def _positive(key: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}: must be > 0, got {value}")
