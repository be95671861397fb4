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
    "rome": lambda params, layer, moments, contexts: Rome("rome", layer, value_params(params), contexts, moments[layer]),
    "memit": lambda params, layer, moments, contexts: Memit(
        "memit", memit_layers(params, layer), value_params(params), params.memit.lam, contexts,
        {block: moments[block] for block in memit_layers(params, layer)}),
}


def build(name: str, params: Params, layer: int, moments: Mapping[int, Tensor], contexts: tuple[str, ...]) -> Editor:
    """The editor `name` at edit layer `layer`, with the layers' second moments and the key contexts."""
    if name not in BUILDERS:
        raise EditLMError(f"editors.names: unknown editor {name!r} (choose from {', '.join(BUILDERS)})")
    return BUILDERS[name](params, layer, moments, contexts)
