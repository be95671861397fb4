"""MEMIT (Meng et al., 2023): many edits in one update, spread over the MLP output projections of several blocks.

Per edit, a target for the residual stream after the last edited block at its key position: the unedited
value plus delta, optimised as in ROME (`optimise_delta` at that block). Then for each edited block l in
order, with the blocks before it already updated: the residual R [N, out] still missing at the last block,
divided by the number of blocks left, goes into
    dW_l = R^T K (lambda C_l + K^T K)^-1,   K [N, in] the edits' keys at block l (means over each edit's prompts),
the least-squares update that moves the edits' keys by R while keeping lambda-weighted typical keys (C_l) fixed.
With one block and one edit it is ROME's rank-one update times (k^T C^-1 k) / (lambda + k^T C^-1 k).

What only the unedited model decides is computed once per model, blocks and edits (`_start`) and shared by every
lambda of the validation grid: the prompts' input to the first edited block, the keys there, the targets. Each
block's input with the blocks below it updated is carried up one block at a time, so block l's step runs only
blocks l and up (the same calls, in the same order, as running each step from the first block: the same bits).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch
from torch import Tensor
from tqdm import tqdm

from editable_lm.editors.rome import (
    ValueParams, _Probe, context_examples, edit_examples, key_positions, mean_per_pair, optimise_delta, prepare,
)
from editable_lm.layer_stats import as_matrix, in_weight_layout, weight_name
from editable_lm.split_forward import Prepared, SplitForward


@torch.no_grad()
def keys_and_outputs(split: SplitForward, prepared: Prepared, hidden: Tensor, layer: int, last: int,
                     params: Mapping[str, Tensor] | None, n_pairs: int) -> tuple[Tensor, Tensor]:
    """Keys [N, in] of block `layer` and outputs [N, D] of block `last` at the key positions, each the mean over
    one edit's prompts (pair-major rows), running blocks `layer` .. `last` on `hidden`, the input of block `layer`."""
    at = key_positions(prepared)
    captured = {}

    def read(module, args, output):
        captured["out"] = (output[0] if isinstance(output, tuple) else output)[at]

    handle = split.blocks[last].register_forward_hook(read)
    try:
        with _Probe(split.model, layer) as probe:
            probe.at = at
            split._run_blocks(hidden, prepared.args, prepared.kwargs, layer, last + 1, params)
            keys = probe.keys
    finally:
        handle.remove()
    return mean_per_pair(keys, n_pairs), mean_per_pair(captured["out"], n_pairs)


@dataclass(frozen=True)
class _Start:
    """What the unedited model decides for a batch of edits: shared by every lambda."""

    prompts: Prepared  # every edit's prompts, pair-major
    hidden: Tensor  # their input to the first edited block
    keys: Tensor  # [N, in] at the first edited block (means over each edit's prompts)
    outputs: Tensor  # [N, D] the last edited block's output there ...
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
        prompts, hidden, keys, outputs, params = start.prompts, start.hidden, start.keys, start.outputs, {}
        for index, layer in enumerate(layers):
            if index:  # the blocks below are updated: block `layer`'s keys and the last block's output now
                keys, outputs = keys_and_outputs(split, prompts, hidden, layer, layers[-1], params, n)
            residual = (start.targets - outputs) / (len(layers) - index)
            moment = None if self.moments is None else self.moments[layer]
            matrix = as_matrix(split.model, layer)
            update = spread_update(keys, residual, moment, self.lam).to(matrix.dtype)
            params[weight_name(split.model, layer)] = in_weight_layout(split.model, layer, matrix + update).detach()
            if index + 1 < len(layers):  # the next edited block's input, with this block updated
                with torch.no_grad():
                    hidden = split._run_blocks(hidden, prompts.args, prompts.kwargs, layer, layers[index + 1], params)
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
            prompts = prepare(split, tokenizer, examples)
            with torch.no_grad():
                hidden = split._run_blocks(prompts.hidden, prompts.args, prompts.kwargs, split.start, layers[0])
            keys, outputs = keys_and_outputs(split, prompts, hidden, layers[0], layers[-1], None, len(pairs))
            done[key] = _Start(prompts, hidden, keys, outputs, outputs + torch.stack(deltas))
        return done[key]
