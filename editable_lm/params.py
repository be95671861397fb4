"""Pipeline parameters: one frozen pydantic model per `params.yaml` section, validated on load.

Every error is one line that starts with the dotted key, e.g. `train.lr: must be > 0, got -1.0`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError
from pydantic import model_validator

from editable_lm.errors import ConfigError

DATA_SOURCES = ("wiki-vital", "wikitext-103-raw-v1", "wikitext-2-raw-v1")


class ParamError(ValueError):
    """A failed check inside a model; `key` overrides the dotted key pydantic reports."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def _yaml_float(value):
    # PyYAML reads 1e-5 (no dot) as a string; ints become floats so messages print -1.0 like the value used.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ParamError("must not be empty")
    return value


# Strict: a string where an int is expected fails, and so does a bool where a number is.
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), BeforeValidator(_yaml_float)]
Bool = Annotated[bool, Strict()]
Text = Annotated[str, Strict(), AfterValidator(_non_blank)]


def Positive(default: float):  # noqa: N802 - reads like a type in the models below
    return Field(default, gt=0, allow_inf_nan=False)


def AtLeast(default: float, low: float):  # noqa: N802
    return Field(default, ge=low, allow_inf_nan=False)


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def check_source(source: str) -> str:
    """`data.source` must name a known corpus, or be a path: a local corpus, checked where it is read."""
    if source not in DATA_SOURCES and "/" not in source:
        raise ParamError(f"unknown value {source!r} (choose from {', '.join(DATA_SOURCES)}, or a path inside corpus/)")
    return source


class DataParams(Section):
    source: Annotated[str, Strict(), AfterValidator(check_source)] = "wiki-vital"
    max_articles: Int = AtLeast(0, 0)  # 0 keeps every article
    min_words: Int = AtLeast(8, 1)  # paragraphs shorter than this are dropped


class ModelParams(Section):
    name: Text = "smollm2-135m"  # offline default, a tiny-random-* smoke model, a hub id or a local path


NAME_SWAPS = "name-swaps"  # pairs.source: the pipeline's own name-swap pairs from the corpus (spaCy NER)


def check_pairs_source(source: str) -> str:
    """`pairs.source`: name-swaps, or a CounterFact / zsRE file inside corpus/ (its format read from its records)."""
    if source != NAME_SWAPS and not source.startswith("corpus/"):
        raise ParamError(f"must be {NAME_SWAPS} or a CounterFact / zsRE file inside corpus/, got {source!r}")
    return source


class PairsParams(Section):
    source: Annotated[str, Strict(), AfterValidator(check_pairs_source)] = NAME_SWAPS
    seed: Int = 0
    max_per_article: Int = AtLeast(4, 1)
    context_sentences: Int = AtLeast(2, 0)  # preceding sentences kept as context
    n_process: Int = AtLeast(2, 1)  # spaCy worker processes
    max_probes: Int = AtLeast(3, 0)  # generality probes kept per pair


class SplitParams(Section):
    seed: Int = 0
    val_frac: Float = Field(0.1, gt=0, lt=1)
    test_frac: Float = Field(0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _fractions_leave_training_data(self):
        if self.val_frac + self.test_frac >= 1:
            raise ParamError("must be below 1", key="split.val_frac + split.test_frac")
        return self


class EditParams(Section):
    """Which weights an edit may touch, shared by training and evaluation."""

    blocks: Int = AtLeast(3, 1)  # the top `blocks` transformer blocks ...
    module: Text = "mlp"  # ... and, inside them, the submodule with this name


class RunParams(Section):
    """How the stages run: `nproc` processes (torchrun ranks, `python -m editable_lm.launch`) for the training and
    evaluation stages; 1 is the plain one-process stage."""

    nproc: Int = AtLeast(1, 1)


class TrainParams(Section):
    """Shared by the fine-tuned baseline and the editable model, so both get the same budget."""

    seed: Int = 0
    steps: Int = AtLeast(100, 1)
    lr: Float = Positive(1e-5)
    batch_size: Int = AtLeast(2, 1)
    seq_len: Int = AtLeast(64, 8)
    outer_blocks: Int = AtLeast(6, 0)  # only the top blocks are trained (0 trains every block)
    checkpoint_every: Int = AtLeast(50, 0)  # steps between resumable checkpoints (0: none)
    warmup_steps: Int = AtLeast(0, 0)  # the rate rises linearly over these first steps ...
    decay: Literal["none", "cosine"] = "none"  # ... then stays, or falls on a cosine towards 0 at the last step

    @model_validator(mode="after")
    def _warmup_ends_before_training(self):
        if self.warmup_steps >= self.steps:
            raise ParamError(f"must be below train.steps ({self.steps}), got {self.warmup_steps}", key="train.warmup_steps")
        return self


class EditableParams(Section):
    inner_steps: Int = AtLeast(2, 1)
    inner_lr: Float = Positive(3e-2)
    cbase: Float = AtLeast(1.0, 0)
    cedit: Float = AtLeast(1.0, 0)
    cloc: Float = AtLeast(1.0, 0)
    first_order: Bool = False
    learn_lr: Bool = False  # learn one inner learning rate per edited tensor
    lr_lr: Float = Positive(1e-4)  # Adam's learning rate for those inner learning rates
    loc_reference: Literal["self", "base", "finetuned"] = "self"  # whose predictions locality's KL keeps: the
    # model's own before the edit (ENN), or the base or fine-tuned model's (a frozen copy)
    cgen: Float = AtLeast(0.0, 0)  # weight of the post-edit loss on a probe: the same person, another sentence
    cneigh: Float = AtLeast(0.0, 0)  # weight of KL(pre || post) at another person's name in their own sentence


class EvaluateParams(Section):
    """The edit procedure and held-out samples, shared by every evaluation stage."""

    seed: Int = 0
    edit_steps: Int = AtLeast(2, 1)
    edit_lr: Float = AtLeast(3e-2, 0)
    n_ppl_passages: Int = AtLeast(8, 1)  # held-out test passages for perplexity, KL and agreement
    seq_len: Int = AtLeast(64, 8)


class ReliabilityParams(Section):
    """One edit at a time: reliability, generality, locality and leakage, with intervals."""

    n_edits: Int = AtLeast(30, 1)
    n_leak_probes: Int = AtLeast(5, 0)  # sentences about other people checked for the new name
    n_bootstrap: Int = AtLeast(1000, 10)
    n_fluency_edits: Int = AtLeast(8, 0)  # fluency (n-gram entropy of generations) after the first N edits
    n_fluency_prompts: Int = AtLeast(3, 1)  # held-out test passages whose first words are the prompts
    fluency_tokens: Int = AtLeast(40, 4)  # greedy tokens generated per prompt


class ValidationParams(Section):
    """The levers' pilots (stage `validate`): one edit at a time on validation edits, the figures of the frontier."""

    n_edits: Int = AtLeast(50, 1)  # validation edits
    n_ppl_passages: Int = AtLeast(16, 1)  # validation passages for perplexity (the fluency prompts come after them)


class TuneParams(Section):
    """Each model's edit learning rate, chosen on validation edits among `sweep.lrs` at `evaluate.edit_steps`,
    and its batched-edit lr and steps among `sweep.lrs` x `batch_steps`, on batches of `batch_size`."""

    n_edits: Int = AtLeast(30, 1)  # validation edits
    n_ppl_passages: Int = AtLeast(4, 1)  # validation passages for the drawdown
    target_success: Float = Field(0.95, ge=0, le=1)  # lowest drawdown among lrs reaching this success, else best success
    batch_size: Int = AtLeast(10, 1)  # batched edits are tuned on batches of this size ...
    n_batch_edits: Int = AtLeast(20, 1)  # ... made of the first n_batch_edits validation edits
    batch_steps: tuple[Annotated[Int, Field(ge=1)], ...] = Field((2, 5), min_length=1)


class SweepParams(Section):
    """Edit strength: every (lr, steps) pair, to compare drawdown at matched success; the matched setting
    is chosen on as many validation edits and passages, then read on the test ones."""

    n_edits: Int = AtLeast(10, 1)
    n_ppl_passages: Int = AtLeast(4, 1)  # passages for the drawdown (a grid point costs one locality pass)
    lrs: tuple[Annotated[Float, Field(ge=0, allow_inf_nan=False)], ...] = Field((0.01, 0.03, 0.1), min_length=1)
    steps: tuple[Annotated[Int, Field(ge=1)], ...] = Field((1, 2), min_length=1)


class SequentialParams(Section):
    """Many edits: one after another without resetting, and together in batches of each size."""

    n_edits: Int = AtLeast(100, 1)
    batch_sizes: tuple[Annotated[Int, Field(ge=1)], ...] = Field((1, 2, 5, 10, 20), min_length=1)
    n_batched: Int = AtLeast(20, 1)  # batched edits use the first n_batched of the edits, for every batch size


EDITORS = ("ft", "ft_kl", "until_success", "rome", "memit", "mend")  # the editors `editable_lm.editors` builds


class EditorsParams(Section):
    """The editors compared: the gradient ones on every model at its tuned lr (stage `evaluate`), the closed-form
    ones on the base model (stage `editors`), each with its own section below."""

    names: tuple[str, ...] = EDITORS
    n_tune_edits: Int = AtLeast(8, 1)  # validation edits for ROME's layer choice
    n_contexts: Int = AtLeast(2, 0)  # short contexts each edit's key is averaged over (besides its own prefix) ...
    context_words: Int = AtLeast(5, 1)  # ... the first words of validation passages
    n_stats_tokens: Int = AtLeast(20000, 1)  # train-passage tokens for the second moments C (stage layer_stats)

    @model_validator(mode="after")
    def _ft_and_rome_first(self):
        names = list(self.names)
        unknown = [name for name in names if name not in EDITORS]
        if unknown:
            raise ParamError(f"unknown editor {unknown[0]!r} (choose from {', '.join(EDITORS)})", key="editors.names")
        if len(set(names)) < len(names):
            raise ParamError(f"lists an editor twice: {names}", key="editors.names")
        if "ft" not in names:  # tune, sweep and sequential edit with it; the editors stage pairs with ENN's ft edits
            raise ParamError(f"must include ft (the edit every model is tuned for), got {names}", key="editors.names")
        if "memit" in names and ("rome" not in names or names.index("rome") > names.index("memit")):
            raise ParamError(f"memit needs rome before it (rome chooses the edit layer memit ends at), got {names}",
                             key="editors.names")
        return self


class FtKlParams(Section):
    """FT+KL: `evaluate.edit_steps` fine-tuning steps on the edit loss plus kl_weight x KL(pre || post) on a locality
    sample of validation passages."""

    kl_weight: Float = Positive(1.0)
    n_loc_passages: Int = AtLeast(2, 1)


class UntilSuccessParams(Section):
    """Edit until it holds (ENN's protocol): steps until every new-name token is the argmax, at most `max_steps`."""

    max_steps: Int = AtLeast(10, 1)


class RomeParams(Section):
    """ROME: the layer and the value optimisation's steps are chosen among `layers` x `steps` on validation edits
    (the `tune.target_success` rule); its other settings are ROME's GPT-2 XL defaults."""

    layers: tuple[Annotated[Int, Field(ge=0)], ...] = Field((6, 12, 18), min_length=1)
    steps: tuple[Annotated[Int, Field(ge=1)], ...] = Field((20,), min_length=1)
    lr: Float = Positive(0.5)
    kl_factor: Float = AtLeast(0.0625, 0)
    weight_decay: Float = AtLeast(0.5, 0)
    clamp_norm: Float = Positive(4.0)


class MemitParams(Section):
    """MEMIT: blocks ending at ROME's chosen layer, how many chosen among `n_layers` and the weight of C among
    `lambdas`, on one validation batch; all test edits in one update."""

    n_layers: tuple[Annotated[Int, Field(ge=1)], ...] = Field((3,), min_length=1)
    lambdas: tuple[Annotated[Float, Field(gt=0, allow_inf_nan=False)], ...] = Field((1e2, 1e3, 1.5e4), min_length=1)


class MendParams(Section):
    """MEND's editor network and its training (stage `mend`, on `model`: the base or the fine-tuned model, with
    `train`'s steps, seeds and data): Adam at `lr` on the network and `lr_lr` on the per-weight edit lrs (started
    at `edit_lr`); the loss is cedit x the post-update edit loss (the edit and one of its probes) + cloc x
    KL(pre || post) on passages. An edit is `edit_passes` passes of the network, each over the gradient at the
    weights the pass before left (MEND's own: 1)."""

    model: Literal["base", "finetuned"] = "base"
    edit_passes: Int = AtLeast(1, 1)
    rank: Int = AtLeast(32, 1)
    n_layers: Int = AtLeast(2, 1)
    edit_lr: Float = Positive(0.1)
    lr: Float = Positive(1e-3)
    lr_lr: Float = Positive(1e-3)
    cedit: Float = AtLeast(1.0, 0)
    cloc: Float = AtLeast(10.0, 0)


class Params(Section):
    run: RunParams = RunParams()
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    pairs: PairsParams = PairsParams()
    split: SplitParams = SplitParams()
    edit: EditParams = EditParams()
    train: TrainParams = TrainParams()
    editable: EditableParams = EditableParams()
    evaluate: EvaluateParams = EvaluateParams()
    reliability: ReliabilityParams = ReliabilityParams()
    tune: TuneParams = TuneParams()
    validation: ValidationParams = ValidationParams()
    sweep: SweepParams = SweepParams()
    sequential: SequentialParams = SequentialParams()
    editors: EditorsParams = EditorsParams()
    ft_kl: FtKlParams = FtKlParams()
    until_success: UntilSuccessParams = UntilSuccessParams()
    rome: RomeParams = RomeParams()
    memit: MemitParams = MemitParams()
    mend: MendParams = MendParams()

    @model_validator(mode="after")
    def _every_rank_has_passages(self):
        # Training shares each batch of passages among the ranks.
        if self.run.nproc > self.train.batch_size:
            raise ParamError(f"{self.run.nproc} processes but train.batch_size {self.train.batch_size}: each rank needs "
                             "a passage of every batch", key="run.nproc")
        return self

    @model_validator(mode="after")
    def _ft_kl_needs_two_steps(self):
        # KL(pre || post) has zero gradient at the unedited weights: one step would be plain FT.
        if "ft_kl" in self.editors.names and self.evaluate.edit_steps < 2:
            raise ParamError("FT+KL needs at least 2 steps (or leave ft_kl out of editors.names)", key="evaluate.edit_steps")
        return self


SECTIONS = tuple(Params.model_fields)


def load_params(path: str | Path = "params.yaml", complete: bool = False) -> Params:
    """Read and validate a params file; missing keys take their defaults.

    A missing section takes its defaults too, unless `complete` (what `check_params` asks for:
    the pipeline's params.yaml must spell out every section).
    """
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:
        raise ConfigError(f"{path}: empty params file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    missing = [name for name in SECTIONS if name not in raw] if complete else []
    if missing:
        raise ConfigError(f"{missing[0]}: section missing from {path} (every section is required)")
    return parse_params(raw)


def parse_params(raw: dict) -> Params:
    """Build `Params` from a nested dict, naming the first unknown or invalid key."""
    for name, values in raw.items():
        if name in SECTIONS and (values is None or values == {}):
            raise ConfigError(f"{name}: empty section (list its keys, as in the committed params.yaml)")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_message(exc.errors()[0])) from None


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error, not 'last wins'."""

    def construct_document(self, node):
        _refuse_duplicates(node, ())
        return super().construct_document(node)


def read_yaml(path: Path):
    """Parse a YAML file; a missing file, invalid YAML or a duplicate key is a ConfigError naming the place."""
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        return yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}:{exc.line}: {exc.key}: duplicate key (first given on line {exc.first})") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: str, line: int, first: int):
        super().__init__(f"{key}: duplicate key")
        self.key, self.line, self.first = key, line, first


def _refuse_duplicates(node, keys: tuple[str, ...]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen = {}
        for key_node, value_node in node.value:
            key = (*keys, str(key_node.value))
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                raise DuplicateKeyError(".".join(key), line, seen[key_node.value])
            seen[key_node.value] = line
            _refuse_duplicates(value_node, key)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicates(item, keys)


_TYPE_NAMES = {"int_type": "int", "float_type": "float", "bool_type": "bool", "string_type": "str",
               "tuple_type": "list", "model_type": "a mapping", "dict_type": "a mapping"}


def _message(error: dict) -> str:
    """One pydantic error as `dotted.key: what is wrong, got value`."""
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "value_error" and isinstance(ctx.get("error"), ParamError):
        return f"{ctx['error'].key or key}: {ctx['error']}"
    if kind == "extra_forbidden":
        if len(error["loc"]) == 1:
            return f"{key}: unknown params section (known: {', '.join(SECTIONS)})"
        section = Params.model_fields[error["loc"][0]].annotation
        return f"{key}: unknown key (known: {', '.join(section.model_fields)})"
    if kind in _TYPE_NAMES:
        return f"{key}: expected {_TYPE_NAMES[kind]}, got {value!r}"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        (bound,) = ctx.values()
        return f"{key}: must be {bounds[kind]} {bound:g}, got {value}"
    if kind == "finite_number":
        return f"{key}: must be a finite number, got {value}"
    if kind == "too_short":
        return f"{key}: must not be empty"
    return f"{key}: {error['msg']}"
