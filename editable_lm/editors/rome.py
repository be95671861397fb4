"""ROME (Meng et al., 2022): a rank-one update of one MLP output projection, in closed form.

For an edit (a prefix whose next words should be the new name) at block l:
- the key k* is the projection's input at the last prefix token ("last token" variant: our edits have no
  separate subject span), averaged over the edit's prompts: its own prefix and the prefix after each of a
  few short unrelated contexts;
- the value v* = W k* + delta, where delta, added to the projection's output at that token of every prompt,
  makes the new name likely (Adam on its NLL), kept small (weight decay relative to the unedited output,
  a norm clamp) and specific (KL on the next-token distribution after the bare contexts, with delta added at
  their last token: a delta that puts the new name after any text is penalised);
- W <- W + delta (C^-1 k*)^T / (k*^T C^-1 k*), C = E[k k^T] over training text (`layer_stats`): among the
  updates that map k* to v*, the one that changes the outputs of typical keys least (min ||dW C^1/2||).

ROME's code evaluates the residual at the bare prompt's key while its direction uses the averaged key; here
both use the averaged key, so that W' k* = v* holds exactly. Everything runs on `SplitForward`: the blocks
below l once per input, only the blocks from l up in every optimisation step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from editable_lm.editing import collate, encode_edit, target_loss
from editable_lm.errors import EditLMError
from editable_lm.layer_stats import as_matrix, in_weight_layout, projection_name, weight_name
from editable_lm.models import device
from editable_lm.split_forward import Prepared, SplitForward, upcast


@dataclass(frozen=True)
class ValueParams:
    """How delta (v* - W k*) is optimised; defaults are ROME's GPT-2 XL settings."""

    steps: int = 20
    lr: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm: float = 4.0  # ||delta|| <= clamp_norm * ||unedited output||
    stop_nll: float = 0.05  # stop early once the new name's mean NLL is below this


def key_positions(prepared: Prepared) -> Tensor:
    """[B, T] bool: the last prefix token of each row (the position that predicts the name's first token)."""
    where = prepared.targets.where
    return where & (where.cumsum(1) == 1)


def edit_prompts(tokenizer, pairs: list[dict], contexts: tuple[str, ...], max_len: int, split: SplitForward) -> Prepared:
    """Each pair's prefix, bare and after each context, with its new name as labels: rows pair-major
    (pair 0's prompts, pair 1's, ...)."""
    examples = [encode_edit(tokenizer, f"{context} {pair['prefix']}".strip(), pair["new_name"], max_len)
                for pair in pairs for context in ("", *contexts)]
    return split.prepare(collate(examples, tokenizer.pad_token_id, device()))


def context_prompts(tokenizer, pair: dict, contexts: tuple[str, ...], max_len: int, split: SplitForward) -> Prepared | None:
    """The bare contexts followed by the new name: where a specific delta should change little."""
    if not contexts:
        return None
    examples = [encode_edit(tokenizer, context, pair["new_name"], max_len) for context in contexts]
    return split.prepare(collate(examples, tokenizer.pad_token_id, device()))


class _Probe:
    """Hooks on one block's MLP output projection: record its inputs and outputs at the key positions,
    or add `delta` to its output there."""

    def __init__(self, split: SplitForward, layer: int):
        self.module = split.model.get_submodule(projection_name(split.model, layer))
        self.at: Tensor | None = None  # [B, T] key positions of the batch running now
        self.delta: Tensor | None = None  # [D] or [B, D]
        self.keys = self.values = None

    def __enter__(self):
        self.handles = [self.module.register_forward_pre_hook(self._read_key), self.module.register_forward_hook(self._out)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def _read_key(self, module, args):
        self.keys = args[0][self.at]

    def _out(self, module, args, output):
        self.values = output[self.at]
        if self.delta is None:
            return output
        delta = self.delta if self.delta.dim() == 1 else self.delta[self.at.nonzero()[:, 0]]
        return output.index_put((self.at,), output[self.at] + delta)


def run_to(split: SplitForward, prepared: Prepared, end: int, params: Mapping[str, Tensor] | None = None) -> None:
    """Run the upper blocks up to and including block `end` (the hooks read what they need)."""
    split._run_blocks(prepared.hidden, prepared.args, prepared.kwargs, split.start, end + 1, params)


@torch.no_grad()
def keys_and_values(split: SplitForward, prepared: Prepared, layer: int, params=None) -> tuple[Tensor, Tensor]:
    """The projection's inputs [B, in] and outputs [B, out] at each row's key position."""
    with _Probe(split, layer) as probe:
        probe.at = key_positions(prepared)
        run_to(split, prepared, layer, params)
        return probe.keys, probe.values


def mean_per_pair(rows: Tensor, n_pairs: int) -> Tensor:
    """[n_pairs * prompts, D] pair-major rows -> [n_pairs, D] means."""
    return rows.view(n_pairs, -1, rows.shape[-1]).mean(1)


def optimise_delta(
    split: SplitForward, prompts: Prepared, contexts: Prepared | None, layer: int, cfg: ValueParams, params=None
) -> Tensor:
    """delta [out] added to block `layer`'s MLP output at every prompt's key position (one edit's prompts)."""
    _, init_out = keys_and_values(split, prompts, layer, params)
    scale = init_out[0].norm()
    kl_ref = None
    if contexts is not None and cfg.kl_factor:
        with torch.no_grad():
            kl_ref = torch.log_softmax(upcast(split.logits(contexts, params, key_positions(contexts))), -1)
    delta = torch.zeros_like(init_out[0], requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=cfg.lr)
    with _Probe(split, layer) as probe, torch.enable_grad():
        for _ in range(cfg.steps):
            probe.at, probe.delta = key_positions(prompts), delta
            logits = split.target_logits(prompts, params)
            nll = target_loss(logits, prompts.targets, per_edit=True) / prompts.targets.n_rows
            if nll.item() < cfg.stop_nll:
                break
            loss = nll + cfg.weight_decay * delta.norm() / scale**2
            if kl_ref is not None:
                probe.at = key_positions(contexts)
                post = torch.log_softmax(upcast(split.logits(contexts, params, probe.at)), -1)
                loss = loss + cfg.kl_factor * (kl_ref.exp() * (kl_ref - post)).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # ROME's clamp: delta stays within a multiple of the output's norm
                limit = cfg.clamp_norm * scale
                if delta.norm() > limit:
                    delta.mul_(limit / delta.norm())
    return delta.detach()


def rank_one_update(weight: Tensor, key: Tensor, delta: Tensor, moment: Tensor | None) -> Tensor:
    """dW [out, in] = delta (C^-1 k)^T / (k^T C^-1 k): maps k to delta, least change to typical keys.
    Without C (None), the identity: the minimum-norm update."""
    key64 = key.double()
    direction = key64 if moment is None else torch.linalg.solve(moment.double(), key64)
    return (torch.outer(delta.double(), direction) / (direction @ key64)).to(weight.dtype)


@dataclass(frozen=True)
class Rome:
    """The ROME editor: one edit, one rank-one update of block `layer`'s MLP output projection."""

    layer: int
    value: ValueParams
    contexts: tuple[str, ...] = ()
    moment: Tensor | None = None  # C [in, in] of this layer (`layer_stats`); None: identity

    def weight_names(self, model) -> list[str]:
        return [weight_name(model, self.layer)]

    def edit(self, split: SplitForward, tokenizer, pairs: list[dict], max_len: int) -> dict[str, Tensor]:
        if len(pairs) != 1:
            raise EditLMError(f"rome edits one request at a time, got {len(pairs)} (use memit for batches)")
        return rome_weights(split, tokenizer, pairs[0], max_len, self.layer, self.value, self.contexts, self.moment)


def rome_weights(split, tokenizer, pair, max_len, layer, value, contexts, moment) -> dict[str, Tensor]:
    """{projection weight: edited weight} for one pair."""
    prompts = edit_prompts(tokenizer, [pair], contexts, max_len, split)
    delta = optimise_delta(split, prompts, context_prompts(tokenizer, pair, contexts, max_len, split), layer, value)
    keys, _ = keys_and_values(split, prompts, layer)
    matrix = as_matrix(split.model, layer)
    update = rank_one_update(matrix, keys.mean(0), delta, moment)
    return {weight_name(split.model, layer): (in_weight_layout(split.model, layer, matrix + update)).detach()}
