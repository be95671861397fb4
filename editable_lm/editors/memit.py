"""MEMIT (Meng et al., 2023): many edits in one update, spread over the MLP output projections of several blocks.

Per edit, a target for the residual stream after the last edited block at its bare prompt's key position (the
edit's own prefix, no context): the unedited value plus delta, optimised as in ROME (`optimise_delta` at that
block). Then for each edited block l in order, with the blocks before it already updated: the residual R [N, out]
still missing there at the bare prompts, divided by the number of blocks left, goes into
    dW_l = R^T K (lambda C_l + K^T K)^-1,   K [N, in] the edits' keys at block l (means over each edit's prompts),
the least-squares update that moves the edits' keys by R while keeping lambda-weighted typical keys (C_l) fixed.
With one block and one edit it is ROME's rank-one update times (k^T C^-1 k) / (lambda + k^T C^-1 k). As in
MEMIT's code, the target and the residual are read at the bare prompt, the keys over every prompt.

What only the unedited model decides is computed once per model, blocks and edits (`_start`) and shared by every
lambda of the validation grid: the prompts' input to the first edited block, the keys there, the targets. Each
block's input with the blocks below it updated is carried up one block at a time, so block l's step runs block l
alone on every prompt (its keys) and blocks l and up on the bare prompts only (the residual).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch
from torch import Tensor
from tqdm import tqdm

from editable_lm.editors.rome import (
    Example, ValueParams, _Probe, context_examples, edit_examples, key_positions, mean_per_pair, optimise_delta, prepare,
)
from editable_lm.layer_stats import as_matrix, in_weight_layout, weight_name
from editable_lm.split_forward import IGNORE, Prepared, SplitForward


ROWS_PER_BATCH = 50  # prompts of similar length per batch: little padding, matrices still large


def up_to_key(example: Example) -> Example:
    """A prompt cut after its key position's next token: nothing later reaches the key (causal attention),
    and the first label keeps marking where the key is."""
    ids, labels = example
    first = next(i for i, label in enumerate(labels) if label != IGNORE)
    return ids[: first + 1], labels[: first + 1]


@torch.no_grad()
def _run(split: SplitForward, hidden: Tensor, batch: Prepared, first: int, end: int, params: Mapping[str, Tensor] | None
         ) -> Tensor:
    return split._run_blocks(hidden, batch.args, batch.kwargs, first, end, params)


@dataclass(frozen=True)
class _Rows:
    """Prompts run in batches of similar length (sorted by length: little of the work is padding), read back in
    their own order."""

    batches: tuple[Prepared, ...]
    order: Tensor  # the prompts' indices, batch after batch

    @classmethod
    def of(cls, split: SplitForward, tokenizer, examples: list[Example]) -> _Rows:
        order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
        chunks = [order[i : i + ROWS_PER_BATCH] for i in range(0, len(order), ROWS_PER_BATCH)]
        return cls(tuple(prepare(split, tokenizer, [examples[i] for i in chunk]) for chunk in chunks), torch.tensor(order))

    def input_to(self, split: SplitForward, block: int) -> tuple[Tensor, ...]:
        """Each batch's input to `block`, from the split model's start."""
        return self.run(split, tuple(batch.hidden for batch in self.batches), split.start, block, None)

    def run(self, split: SplitForward, hidden: tuple[Tensor, ...], first: int, end: int,
            params: Mapping[str, Tensor] | None) -> tuple[Tensor, ...]:
        """Blocks `first` .. `end - 1` on each batch's `hidden`."""
        return tuple(_run(split, h, batch, first, end, params) for h, batch in zip(hidden, self.batches))

    def in_order(self, rows: list[Tensor]) -> Tensor:
        """Per-batch rows (one per prompt) -> [prompts, D] in the prompts' own order."""
        return torch.cat(rows)[torch.argsort(self.order)]

    def keys(self, split: SplitForward, hidden: tuple[Tensor, ...], layer: int, params: Mapping[str, Tensor] | None
             ) -> Tensor:
        """Block `layer`'s projection inputs [prompts, in] at the key positions, running block `layer` alone."""
        keys = []
        with _Probe(split.model, layer) as probe:
            for h, batch in zip(hidden, self.batches):
                probe.at = key_positions(batch)
                _run(split, h, batch, layer, layer + 1, params)
                keys.append(probe.keys)
        return self.in_order(keys)

    def outputs(self, split: SplitForward, hidden: tuple[Tensor, ...], first: int, last: int,
                params: Mapping[str, Tensor] | None) -> Tensor:
        """Block `last`'s output [prompts, D] at the key positions, running blocks `first` .. `last`."""
        outputs, at = [], {}

        def read(module, args, output):
            outputs.append((output[0] if isinstance(output, tuple) else output)[at["now"]])

        handle = split.blocks[last].register_forward_hook(read)
        try:
            for h, batch in zip(hidden, self.batches):
                at["now"] = key_positions(batch)
                _run(split, h, batch, first, last + 1, params)
        finally:
            handle.remove()
        return self.in_order(outputs)


@dataclass(frozen=True)
class _Start:
    """What the unedited model decides for a batch of edits: shared by every lambda."""

    prompts: _Rows  # every edit's prompts ...
    hidden: tuple[Tensor, ...]  # ... their input to the first edited block
    keys: Tensor  # [N, in] at the first edited block (means over each edit's prompts)
    bare: _Rows  # each edit's bare prompt ...
    bare_hidden: tuple[Tensor, ...]  # ... its input to the first edited block
    outputs: Tensor  # [N, D] the last edited block's output at the bare prompts' key ...
    targets: Tensor  # ... and what it should be: plus each edit's delta


# Per model (never edited in place) and batch: its `_Start`.
_STARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def spread_update(keys: Tensor, residual: Tensor, moment: Tensor | None, lam: float) -> Tensor:
    """dW [out, in] = R^T K (lambda C + K^T K)^-1 for keys K [N, in] and residuals R [N, out], in float64."""
    k, r = keys.double(), residual.double()
    c = torch.eye(k.shape[1], dtype=torch.float64, device=k.device) if moment is None else moment.double()
    return torch.linalg.solve(lam * c + k.T @ k, k.T @ r).T


@dataclass(frozen=True)
class Memit:
    """The MEMIT editor: any number of edits, one update of each block in `layers`."""

    batched: ClassVar[bool] = True
    name: str
    layers: tuple[int, ...]
    value: ValueParams
    lam: float = 1.5e4
    contexts: tuple[str, ...] = ()
    moments: Mapping[int, Tensor] | None = None  # C per layer (`layer_stats`); None: identity

    def weight_names(self, model) -> list[str]:
        return [weight_name(model, layer) for layer in self.layers]

    def edit(self, split: SplitForward, tokenizer, edit: Prepared, pairs: list[dict], max_len: int):
        """{projection weight: edited weight} per layer, and no gradient steps on the weights (None)."""
        layers, n = sorted(self.layers), len(pairs)
        start = self._start(split, tokenizer, pairs, max_len)
        prompts, bare, params = start.prompts, start.bare, {}
        hidden, bare_hidden, keys, outputs = start.hidden, start.bare_hidden, start.keys, start.outputs
        for index, layer in enumerate(layers):
            if index:  # the blocks below are updated: block `layer`'s keys and the last block's output now
                keys = mean_per_pair(prompts.keys(split, hidden, layer, params), n)
                outputs = bare.outputs(split, bare_hidden, layer, layers[-1], params)
            residual = (start.targets - outputs) / (len(layers) - index)
            moment = None if self.moments is None else self.moments[layer]
            matrix = as_matrix(split.model, layer)
            update = spread_update(keys, residual, moment, self.lam).to(matrix.dtype)
            params[weight_name(split.model, layer)] = in_weight_layout(split.model, layer, matrix + update).detach()
            if index + 1 < len(layers):  # the next edited block's input, with this block updated
                hidden = prompts.run(split, hidden, layer, layers[index + 1], params)
                bare_hidden = bare.run(split, bare_hidden, layer, layers[index + 1], params)
        return params, None

    def _start(self, split: SplitForward, tokenizer, pairs: list[dict], max_len: int) -> _Start:
        """The unedited model's part for these edits at these blocks, computed once per model."""
        layers = sorted(self.layers)
        examples = edit_examples(tokenizer, pairs, self.contexts, max_len)
        key = (tuple(layers), self.value, self.contexts, max_len, tuple((tuple(ids), tuple(labels)) for ids, labels in examples))
        done = _STARTS.setdefault(split.model, {})
        if key not in done:
            deltas = []
            # each edit's delta alone, as MEMIT computes z per request
            for pair in tqdm(pairs, desc=f"{self.name}: values", unit="edit", leave=False, disable=len(pairs) < 2):
                prompts = edit_examples(tokenizer, [pair], self.contexts, max_len)
                contexts = context_examples(tokenizer, pair, self.contexts, max_len)
                deltas.append(optimise_delta(split.model, prompts, contexts, layers[-1], self.value)[0])
            cut = [up_to_key(example) for example in examples]
            # pair-major: each edit's bare prompt first, then its prompts after the contexts
            prompts, bare = _Rows.of(split, tokenizer, cut), _Rows.of(split, tokenizer, cut[:: 1 + len(self.contexts)])
            hidden, bare_hidden = prompts.input_to(split, layers[0]), bare.input_to(split, layers[0])
            keys = mean_per_pair(prompts.keys(split, hidden, layers[0], None), len(pairs))
            outputs = bare.outputs(split, bare_hidden, layers[0], layers[-1], None)
            done[key] = _Start(prompts, hidden, keys, bare, bare_hidden, outputs, outputs + torch.stack(deltas))
        return done[key]
