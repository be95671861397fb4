"""MEND as an editor: a pass of the trained editor network over the edit's gradient factors (`passes` of them,
each from the weights the one before left; MEND's own is one), no gradient steps on the weights
(`editable_lm.mend` holds the network and its training). A batch of edits sums their factors' updates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from editable_lm.mend import Mend
from editable_lm.split_forward import Prepared, SplitForward


@dataclass(frozen=True, eq=False)
class MendEditor:
    batched: ClassVar[bool] = False
    name: str
    editor: Mend
    passes: int = 1

    def weight_names(self, model) -> list[str]:
        return list(self.editor.names)

    def edit(self, split: SplitForward, tokenizer, edit: Prepared, pairs: list[dict], max_len: int):
        """{edited weight: new value}, and no gradient steps on the weights (None)."""
        new = None
        for _ in range(self.passes):
            new = self.editor.update(split, edit, new, per_edit=len(pairs) > 1)
            new = {name: value.detach() for name, value in new.items()}
        return new, None
