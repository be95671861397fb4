"""MEMIT (Meng et al., 2023): many edits in one update, spread over the MLP output projections of several blocks.

Per edit, a target for the residual stream after the last edited block at its key position: the unedited
value plus delta, optimised as in ROME (`optimise_delta` at that block). Then for each edited block l in
order, with the blocks before it already updated: the residual R [N, out] still missing at the last block,
divided by the number of blocks left, goes into
    dW_l = R^T K (lambda C_l + K^T K)^-1,   K [N, in] the edits' keys at block l (means over each edit's prompts),
the least-squares update that moves the edits' keys by R while keeping lambda-weighted typical keys (C_l) fixed.
With one block and one edit it is ROME's rank-one update times (k^T C^-1 k) / (lambda + k^T C^-1 k).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch
from torch import Tensor
from tqdm import tqdm

from editable_lm.editors.rome import (
    ValueParams, _Probe, context_examples, edit_examples, key_positions, mean_per_pair, optimise_delta, prepare, run_to,
)
from editable_lm.layer_stats import as_matrix, in_weight_layout, weight_name
from editable_lm.split_forward import Prepared, SplitForward


@torch.no_grad()
def keys_and_outputs(split: SplitForward, prepared: Prepared, layer: int, last: int, params) -> tuple[Tensor, Tensor]:
    """Keys [B, in] of block `layer` and outputs [B, D] of block `last`, at each row's key position."""
    at = key_positions(prepared)
    captured = {}

    def read(module, args, output):
        captured["out"] = (output[0] if isinstance(output, tuple) else output)[at]

    handle = split.blocks[last].register_forward_hook(read)
    try:
        with _Probe(split.model, layer) as probe:
            probe.at = at
            run_to(split, prepared, last, params)
            keys = probe.keys
    finally:
        handle.remove()
    return keys, captured["out"]


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
        layers, last = sorted(self.layers), max(self.layers)
        deltas = []
        # each edit's delta alone, as MEMIT computes z per request
        for pair in tqdm(pairs, desc=f"{self.name}: values", unit="edit", leave=False, disable=len(pairs) < 2):
            prompts = edit_examples(tokenizer, [pair], self.contexts, max_len)
            contexts = context_examples(tokenizer, pair, self.contexts, max_len)
            deltas.append(optimise_delta(split.model, prompts, contexts, last, self.value)[0])
        prompts = prepare(split, tokenizer, edit_examples(tokenizer, pairs, self.contexts, max_len))
        _, outputs = keys_and_outputs(split, prompts, layers[0], last, None)
        targets = mean_per_pair(outputs, len(pairs)) + torch.stack(deltas)
        params: dict[str, Tensor] = {}
        for index, layer in enumerate(layers):
            keys, outputs = keys_and_outputs(split, prompts, layer, last, params)
            residual = (targets - mean_per_pair(outputs, len(pairs))) / (len(layers) - index)
            moment = None if self.moments is None else self.moments[layer]
            matrix = as_matrix(split.model, layer)
            update = spread_update(mean_per_pair(keys, len(pairs)), residual, moment, self.lam).to(matrix.dtype)
            params[weight_name(split.model, layer)] = in_weight_layout(split.model, layer, matrix + update).detach()
        return params, None
