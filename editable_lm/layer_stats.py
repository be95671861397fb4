"""Second moments C = E[k k^T] of the MLP output projection's inputs: what ROME and MEMIT keep unchanged.

The key k of block l is the input of its MLP output projection (Llama `mlp.down_proj`, GPT-2 `mlp.c_proj`)
at one token; C is averaged over the real tokens of training passages (uncentred, as in ROME's `layer_stats`).
The model runs only up to the highest requested block, and the sums are kept in float64.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from editable_lm.errors import EditLMError
from editable_lm.models import decoder_blocks
from editable_lm.training import encode_passages

PROJECTIONS = ("down_proj", "c_proj", "fc_out", "dense_4h_to_h")  # Llama/Mistral, GPT-2, GPT-J, GPT-NeoX


def projection_name(model: nn.Module, layer: int) -> str:
    """Dotted name of block `layer`'s MLP output projection."""
    prefix, blocks = decoder_blocks(model)
    if not 0 <= layer < len(blocks):
        raise EditLMError(f"layer {layer}: the model has blocks 0..{len(blocks) - 1}")
    mlp = getattr(blocks[layer], "mlp", None)
    for name in PROJECTIONS:
        if isinstance(getattr(mlp, name, None), nn.Module):
            return f"{prefix}.{layer}.mlp.{name}"
    raise EditLMError(f"{type(model).__name__}: block {layer} has no MLP output projection ({', '.join(PROJECTIONS)})")


def as_matrix(model: nn.Module, layer: int) -> Tensor:
    """The projection's weight as [out, in] (value = W @ key): GPT-2's Conv1D stores it transposed."""
    module = model.get_submodule(projection_name(model, layer))
    return module.weight if isinstance(module, nn.Linear) else module.weight.T


def weight_name(model: nn.Module, layer: int) -> str:
    return projection_name(model, layer) + ".weight"


def in_weight_layout(model: nn.Module, layer: int, matrix: Tensor) -> Tensor:
    """An [out, in] matrix in the layout of the projection's weight (inverse of `as_matrix`)."""
    module = model.get_submodule(projection_name(model, layer))
    return matrix if isinstance(module, nn.Linear) else matrix.T


class _Stop(Exception):
    """Raised after the highest requested block: the rest of the model is not needed."""


@torch.no_grad()
def second_moments(
    model: nn.Module, tokenizer, passages: list[dict], layers: list[int], n_tokens: int, seq_len: int, batch_size: int = 8
) -> tuple[dict[int, Tensor], int]:
    """C [in, in] (float64) per layer over the real tokens of the first passages, until `n_tokens` are seen;
    and the number of tokens used."""
    _, blocks = decoder_blocks(model)
    sums: dict[int, Tensor] = {}
    mask: list[Tensor] = []  # the current batch's attention mask, read by the hooks

    def hook(layer):
        def collect(module, args):
            keys = args[0][mask[0].bool()].double()  # [real tokens, in]
            sums[layer] = sums.get(layer, 0) + keys.T @ keys
        return collect

    def stop(module, args, output):
        raise _Stop

    handles = [model.get_submodule(projection_name(model, layer)).register_forward_pre_hook(hook(layer)) for layer in layers]
    handles.append(blocks[max(layers)].register_forward_hook(stop))
    seen = 0
    try:
        with tqdm(total=n_tokens, desc="layer stats", unit="tok") as bar:
            for start in range(0, len(passages), batch_size):
                batch = encode_passages(passages[start : start + batch_size], tokenizer, seq_len)
                mask[:] = [batch["attention_mask"]]
                try:
                    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
                except _Stop:
                    pass
                count = int(batch["attention_mask"].sum())
                seen += count
                bar.update(count)
                if seen >= n_tokens:
                    break
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise EditLMError("layer stats: no tokens in the passages")
    return {layer: sums[layer] / seen for layer in layers}, seen


def save_moments(path: str | Path, moments: dict[int, Tensor], n_tokens: int) -> None:
    """One safetensors file: a tensor per layer (`layer.<l>`), the token count in the metadata."""
    save_file({f"layer.{layer}": c.contiguous() for layer, c in moments.items()}, str(path), {"n_tokens": str(n_tokens)})


def load_moments(path: str | Path, layers: list[int]) -> dict[int, Tensor]:
    """C per layer from `save_moments`; a one-line error if a layer is missing."""
    path = Path(path)
    if not path.is_file():
        raise EditLMError(f"{path}: no layer statistics (run the layer_stats stage)")
    stored = load_file(str(path))
    missing = [layer for layer in layers if f"layer.{layer}" not in stored]
    if missing:
        raise EditLMError(f"{path}: no statistics for layer(s) {missing}; it has {sorted(stored)} (rerun layer_stats)")
    return {layer: stored[f"layer.{layer}"] for layer in layers}
