"""Model editors behind one interface.

An editor has a `name`, says which weights it changes (`weight_names(model)`; None: the weights the split model
was built for) and, given the split model, its tokenizer, the prepared edit batch and the pairs it came from,
returns the edited weights as a dict (the model is never mutated) and the gradient steps it took on them (None
for closed-form editors). An editor that makes many edits in one update (`batched` true) is evaluated on all the
test edits at once. Today's gradient procedures (`ft`, `ft_kl`, `until_success`: `evaluation.Procedure`) have the
same interface; ROME (`rome`) and MEMIT (`memit`) are built here from params by name.
"""

from __future__ import annotations

from typing import Mapping, Protocol

from torch import Tensor

from editable_lm.editors.memit import Memit
from editable_lm.editors.rome import Rome, ValueParams
from editable_lm.errors import EditLMError
from editable_lm.params import Params
from editable_lm.split_forward import Prepared, SplitForward


class Editor(Protocol):
    name: str
    batched: bool

    def weight_names(self, model) -> list[str] | None: ...

    def edit(self, split: SplitForward, tokenizer, edit: Prepared, pairs: list[dict], max_len: int
             ) -> tuple[dict[str, Tensor], int | None]: ...


def value_params(params: Params) -> ValueParams:
    r = params.rome
    return ValueParams(steps=r.steps, lr=r.lr, kl_factor=r.kl_factor, weight_decay=r.weight_decay, clamp_norm=r.clamp_norm)


def memit_layers(params: Params, layer: int) -> tuple[int, ...]:
    """MEMIT's blocks: `memit.n_layers` ending at `layer`."""
    return tuple(range(max(0, layer - params.memit.n_layers + 1), layer + 1))


def stats_layers(params: Params) -> list[int]:
    """Every block whose second moments an editor may need: each candidate layer and MEMIT's blocks below it."""
    return sorted({block for layer in params.rome.layers for block in memit_layers(params, layer)})


BUILDERS = {
    "rome": lambda params, setting, moments, contexts: Rome(
        "rome", setting["layer"], value_params(params), contexts, moments[setting["layer"]]),
    "memit": lambda params, setting, moments, contexts: Memit(
        "memit", memit_layers(params, setting["layer"]), value_params(params), setting["lambda"], contexts,
        {block: moments[block] for block in memit_layers(params, setting["layer"])}),
}


def settings(name: str, params: Params, layer: int | None) -> list[dict]:
    """The settings an editor is chosen among on validation edits: ROME's the edit layer (`rome.layers`); MEMIT's
    its lambda (`memit.lambdas`) at the chosen edit `layer`."""
    if name == "rome":
        return [{"layer": candidate} for candidate in params.rome.layers]
    return [{"layer": layer, "lambda": lam} for lam in params.memit.lambdas]


def key_contexts(val_passages: list[dict], params: Params) -> tuple[str, ...]:
    """The short contexts an edit's key is averaged over: the first `editors.context_words` words of the
    validation passages after the `tune.n_ppl_passages` the tuning reads (the same seeded sample as `tune`)."""
    from editable_lm.evaluation import fluency_prompts, held_out

    ed, tune = params.editors, params.tune
    sample = held_out(val_passages, tune.n_ppl_passages + ed.n_contexts, params.evaluate.seed)
    return fluency_prompts(sample[tune.n_ppl_passages :], ed.context_words)


def setting_name(setting: dict) -> str:
    return ",".join(f"{key}={value:g}" for key, value in setting.items())


def build(name: str, params: Params, setting: dict, moments: Mapping[int, Tensor], contexts: tuple[str, ...]) -> Editor:
    """The editor `name` at `setting` (its edit layer, ...), with the layers' second moments and the key contexts."""
    if name not in BUILDERS:
        raise EditLMError(f"editors.names: unknown editor {name!r} (choose from {', '.join(BUILDERS)})")
    return BUILDERS[name](params, setting, moments, contexts)
