"""Model editors behind one interface, built by name from `editors.names` and each one's params section.

An editor has a `name`, says which weights it changes (`weight_names(model)`; None: the weights the split model
was built for) and, given the split model, its tokenizer, the prepared edit batch and the pairs it came from,
returns the edited weights as a dict (the model is never mutated) and the gradient steps it took on them (None
for closed-form editors). An editor that makes many edits in one update (`batched` true) is evaluated on all the
test edits at once.

The gradient editors (`gradient.py`: `ft`, `ft_kl`, `until_success`) edit each model at the learning rate `tune`
chose for it (stage `evaluate`); the others edit the base model (stage `editors`): `rome` and `memit` in closed
form at a setting chosen on validation edits, `mend` with the editor network trained by stage `mend`. Adding an editor: its module, a line in `BUILDERS`, its params
section (`params.py`) and its name in `editors.names`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol

from torch import Tensor

from editable_lm.editors import gradient
from editable_lm.editors.gradient import FineTune
from editable_lm.editors.memit import Memit
from editable_lm.editors.mend import MendEditor
from editable_lm.editors.rome import Rome, ValueParams
from editable_lm.errors import EditLMError
from editable_lm.locality import reference
from editable_lm.mend import load_mend
from editable_lm.params import Params
from editable_lm.split_forward import Prepared, SplitForward


class Editor(Protocol):
    name: str
    batched: bool

    def weight_names(self, model) -> list[str] | None: ...

    def edit(self, split: SplitForward, tokenizer, edit: Prepared, pairs: list[dict], max_len: int
             ) -> tuple[dict[str, Tensor], int | None]: ...


def value_params(params: Params, setting: dict) -> ValueParams:
    """How ROME and MEMIT optimise an edit's value: the setting's `steps`, the rest from `rome`."""
    r = params.rome
    return ValueParams(steps=setting["steps"], lr=r.lr, kl_factor=r.kl_factor, weight_decay=r.weight_decay, clamp_norm=r.clamp_norm)


def edited_blocks(setting: dict) -> tuple[int, ...]:
    """The blocks a closed-form editor's setting edits: ROME's `layer`; MEMIT's `n_layers` ending there."""
    layer = setting["layer"]
    return tuple(range(max(0, layer - setting.get("n_layers", 1) + 1), layer + 1))


def stats_layers(params: Params) -> list[int]:
    """Every block whose second moments an editor may need: each candidate layer and MEMIT's blocks below it."""
    deepest = max(params.memit.n_layers)
    return sorted({block for layer in params.rome.layers for block in edited_blocks({"layer": layer, "n_layers": deepest})})


@dataclass(frozen=True)
class Resources:
    """What an editor is built with besides its params and setting."""

    split: SplitForward | None = None  # the model it edits (FT+KL's locality reference is computed on it)
    tokenizer: object = None
    max_len: int = 64
    lr: float | Mapping[str, Tensor | float] = 0.0  # gradient editors: the model's tuned edit lr, per tensor
    loc_passages: list[dict] = field(default_factory=list)  # FT+KL's locality sample
    moments: Mapping[int, Tensor] = field(default_factory=dict)  # closed-form editors: C per block (`layer_stats`)
    contexts: tuple[str, ...] = ()  # ... and the short contexts an edit's key is averaged over
    mend: str | None = None  # MEND: the trained editor's file (stage `mend`), for `split`'s model


def _locality_sample(res: Resources):
    if not res.loc_passages:
        raise EditLMError("ft_kl: no locality passages (the validation split's passages: run `dvc repro split`)")
    return reference(res.split, res.tokenizer, res.loc_passages, res.max_len)


BUILDERS = {
    "ft": lambda params, setting, res: FineTune("ft", res.lr, params.evaluate.edit_steps),
    "ft_kl": lambda params, setting, res: FineTune(
        "ft_kl", res.lr, params.evaluate.edit_steps, params.ft_kl.kl_weight, _locality_sample(res)),
    "until_success": lambda params, setting, res: FineTune(
        "until_success", res.lr, params.until_success.max_steps, until_success=True),
    "rome": lambda params, setting, res: Rome(
        "rome", setting["layer"], value_params(params, setting), res.contexts, res.moments[setting["layer"]]),
    "memit": lambda params, setting, res: Memit(
        "memit", edited_blocks(setting), value_params(params, setting), setting["lambda"], res.contexts,
        {block: res.moments[block] for block in edited_blocks(setting)}),
    "mend": lambda params, setting, res: MendEditor("mend", load_mend(res.split, res.mend), params.mend.edit_passes),
}


def gradient_names(params: Params) -> list[str]:
    """The listed editors that edit each model at its tuned lr (stage `evaluate`)."""
    return [name for name in params.editors.names if name in gradient.NAMES]


def base_editor_names(params: Params) -> list[str]:
    """The listed editors that edit the base model, each at its setting chosen on validation edits (stage `editors`)."""
    return [name for name in params.editors.names if name not in gradient.NAMES]


def edited_model(name: str, params: Params) -> str:
    """The model a base-model editor edits (stage `editors`): MEND the one its network was trained for
    (`mend.model`), the others the base model."""
    return params.mend.model if name == "mend" else "base"


def settings(name: str, params: Params, rome: dict | None = None) -> list[dict]:
    """The settings an editor is chosen among on validation edits: ROME's the edit layer and the value
    optimisation's steps (`rome.layers` x `rome.steps`); MEMIT's its number of blocks (`memit.n_layers`) and
    lambda (`memit.lambdas`) at the layer and steps of ROME's setting `rome` (None: ROME's first candidate); MEND
    has none (its training chose them)."""
    if name == "rome":
        return [{"layer": layer, "steps": steps} for layer in params.rome.layers for steps in params.rome.steps]
    if name == "memit":
        at = rome or settings("rome", params)[0]
        return [{"layer": at["layer"], "steps": at["steps"], "n_layers": n, "lambda": lam}
                for n in params.memit.n_layers for lam in params.memit.lambdas]
    return [{}]


def key_contexts(val_passages: list[dict], params: Params) -> tuple[str, ...]:
    """The short contexts an edit's key is averaged over: the first `editors.context_words` words of the
    validation passages after the `tune.n_ppl_passages` the tuning reads (the same seeded sample as `tune`)."""
    from editable_lm.evaluation import fluency_prompts, held_out

    ed, tune = params.editors, params.tune
    sample = held_out(val_passages, tune.n_ppl_passages + ed.n_contexts, params.evaluate.seed)
    return fluency_prompts(sample[tune.n_ppl_passages :], ed.context_words)


def setting_name(setting: dict) -> str:
    return ",".join(f"{key}={value:g}" for key, value in setting.items()) or "trained"


def build(name: str, params: Params, setting: dict | None, resources: Resources) -> Editor:
    """The editor `name` at `setting` (ROME's edit layer, MEMIT's lambda; None or {} for the others)."""
    if name not in BUILDERS:
        raise EditLMError(f"editors.names: unknown editor {name!r} (choose from {', '.join(BUILDERS)})")
    return BUILDERS[name](params, setting, resources)
