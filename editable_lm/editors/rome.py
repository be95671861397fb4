"""ROME (Meng et al., 2022): a rank-one update of one MLP output projection, in closed form.

For an edit (a prefix whose next words should be the new name) at block l:
- the key k* is the projection's input at the last prefix token ("last token" variant: our edits have no
  separate subject span), averaged over the edit's prompts: its own prefix, bare and after each of a few
  short unrelated contexts;
- the value v* = W k* + delta, where delta, added to the projection's output at that token of every prompt,
  makes the new name likely (Adam on its NLL), kept small (weight decay relative to the unedited output,
  a norm clamp) and specific (KL on the next-token distribution after the bare contexts, with delta added at
  their last token: a delta that would put the new name after any text is penalised);
- W <- W + delta (C^-1 k*)^T / (k*^T C^-1 k*), C = E[k k^T] over training text (`layer_stats`): of the
  updates that map k* to v*, the one that changes the outputs of typical keys least (min ||dW C^1/2||).

ROME's code evaluates the residual at the bare prompt's key while its direction uses the averaged key; here
both use the averaged key, so that W' k* = v* holds exactly.

Nothing before a prompt's key position depends on delta, and no block below l does, so each prompt's tokens
before its key run once, with their attention keys and values cached at every block, and its key and name
tokens once through the blocks below l (`_Suffixes`); each optimisation step runs only blocks l and up on the
key token and the name's tokens, and the LM head only where a loss reads it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from editable_lm.editing import collate, encode_edit
from editable_lm.errors import EditLMError
from editable_lm.layer_stats import as_matrix, in_weight_layout, projection_name, weight_name
from editable_lm.models import device
from editable_lm.split_forward import IGNORE, Prepared, SplitForward, Targets, _Stop, upcast

Example = tuple[list[int], list[int]]  # token ids, labels (the new name's tokens; IGNORE elsewhere)


@dataclass(frozen=True)
class ValueParams:
    """How delta (v* - W k*) is optimised; defaults are ROME's GPT-2 XL settings."""

    steps: int = 20
    lr: float = 0.5
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    clamp_norm: float = 4.0  # ||delta|| <= clamp_norm * ||unedited output||
    stop_nll: float = 0.05  # stop early once the new name's mean NLL is below this


def edit_examples(tokenizer, pairs: list[dict], contexts: tuple[str, ...], max_len: int) -> list[Example]:
    """Each pair's prefix with its new name (labels), bare and after each context: pair-major rows."""
    examples = []
    for pair in pairs:
        ids, labels = encode_edit(tokenizer, pair["prefix"], pair["new_name"], max_len)
        for context in ("", *contexts):
            extra = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
            examples.append((extra + ids, [IGNORE] * len(extra) + labels))
    return examples


def context_examples(tokenizer, pair: dict, contexts: tuple[str, ...], max_len: int) -> list[Example]:
    """The bare contexts followed by the new name's first token: where a specific delta should change little.
    Only the next-token distribution at the context's last token is compared, so the rest of the name (which
    would cost a forward and backward per optimisation step) is left off."""
    examples = []
    for context in contexts:
        ids, labels = encode_edit(tokenizer, context, pair["new_name"], max_len)
        first = next(i for i, label in enumerate(labels) if label != IGNORE)
        examples.append((ids[: first + 1], labels[: first + 1]))
    return examples


def prepare(split: SplitForward, tokenizer, examples: list[Example]) -> Prepared:
    return split.prepare(collate(examples, tokenizer.pad_token_id, device()))


def key_positions(prepared: Prepared) -> Tensor:
    """[B, T] bool: the last prefix token of each row (the position that predicts the name's first token)."""
    where = prepared.targets.where
    return where & (where.cumsum(1) == 1)


class _Probe:
    """Hooks on one block's MLP output projection: record its inputs and outputs at the key positions `at`,
    and add `delta` to its output there if set."""

    def __init__(self, model: nn.Module, layer: int):
        self.module = model.get_submodule(projection_name(model, layer))
        self.at: Tensor | None = None  # [B, T] key positions of the batch running now
        self.delta: Tensor | None = None  # [out]
        self.keys = self.values = None

    def __enter__(self):
        self.handles = [self.module.register_forward_pre_hook(self._read_key), self.module.register_forward_hook(self._out)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def _read_key(self, module, args):
        if self.at is not None:
            self.keys = args[0][self.at]

    def _out(self, module, args, output):
        if self.at is None:
            return output
        self.values = output[self.at]
        if self.delta is None:
            return output
        return output.index_put((self.at,), output[self.at] + self.delta)


def mean_per_pair(rows: Tensor, n_pairs: int) -> Tensor:
    """[n_pairs * prompts, D] pair-major rows -> [n_pairs, D] means."""
    return rows.view(n_pairs, -1, rows.shape[-1]).mean(1)


class _Suffixes:
    """Prompts whose key positions are lined up by left padding, run for delta's optimisation. Nothing before a
    prompt's key depends on delta, and no block below `layer` does: the columns before the key run once
    through the model (their attention keys and values cached at every block), the key column and the rest once
    through the blocks below `layer`, and each call of `logits` runs only blocks `layer` and up on those few
    columns, all rows in one batch (shorter suffixes right-padded, masked), with the LM head at the labelled
    positions alone. On a CPU a step costs what reading the weights costs, whatever the few rows."""

    def __init__(self, model: nn.Module, examples: list[Example], layer: int):
        keys = [next(i for i in range(1, len(labels)) if labels[i] != IGNORE) - 1 for _, labels in examples]
        lengths = [len(ids) - key for (ids, _), key in zip(examples, keys)]
        self.key, width = max(keys), max(lengths)
        pad = [self.key - key for key in keys]
        rows = [([0] * p + ids + [0] * (width - n), [IGNORE] * p + labels + [IGNORE] * (width - n),
                 [0] * p + [1] * len(ids) + [0] * (width - n)) for p, n, (ids, labels) in zip(pad, lengths, examples)]
        ids, labels, mask = (torch.tensor([row[i] for row in rows], device=device()) for i in range(3))
        self.layer, self.split = layer, SplitForward(model, [weight_name(model, layer)])
        self.cache = _prefix_cache(model, examples, keys, pad) if self.key else None
        full = Targets.of(labels[:, self.key :])
        # the last column predicts no label and no column attends to it: it is left off
        ids, mask, where = ids[:, self.key : -1], mask[:, :-1], full.where[:, :-1]
        self.suffix = Prepared({"input_ids": ids}, Targets(where, full.tokens, full.rows, full.n_rows),
                               *self._block_input(mask, ids))

    def _block_input(self, mask: Tensor, suffix: Tensor) -> tuple[Tensor, tuple, dict]:
        """What block `layer` receives for the suffix columns (the prefix in the cache), as `SplitForward` keeps it."""
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # as if each prompt ran alone
        captured = {}

        def stop(module, args, kwargs):
            captured["args"], captured["kwargs"] = args, dict(kwargs)
            raise _Stop

        # TODO(next rerun of the stages that depend on split_forward.py): share this capture with
        # `SplitForward._block_input`, which differs only in the model's arguments
        handle = self.split.blocks[self.layer].register_forward_pre_hook(stop, with_kwargs=True)
        try:
            with torch.no_grad():
                self.split.model(input_ids=suffix, attention_mask=mask, position_ids=positions[:, self.key :],
                                 cache=self.cache, use_cache=self.cache is not None)
        except _Stop:
            pass
        finally:
            handle.remove()
        args, kwargs = captured["args"], captured["kwargs"]
        hidden = args[0] if args else kwargs.pop("hidden_states")
        return hidden, tuple(args[1:]), kwargs

    @staticmethod
    def _crop(layers, columns: int) -> None:
        """Drop the suffix's entries from these cache layers, back to the prefix, as constants (the crop is a
        view of the graph of the call that added them)."""
        for layer in layers:
            layer.crop(-columns)
            layer.keys, layer.values = layer.keys.detach(), layer.values.detach()

    def logits(self, probe: _Probe) -> Tensor:
        """Logits [N, V] at the labelled positions (row-major), `probe.delta` added at each row's key column."""
        at = torch.zeros_like(self.suffix.batch["input_ids"], dtype=torch.bool)
        at[:, 0] = True
        probe.at = at
        logits = self.split.target_logits(self.suffix)
        if self.cache is not None:
            self._crop(self.cache.layers[self.layer :], at.shape[1])  # the next call starts from the prefix
        return logits

    def labelled(self, rows: int) -> int:
        """How many of the labelled positions lie in the first `rows` rows."""
        return int((self.suffix.targets.rows < rows).sum())

    def nll(self, logits: Tensor, rows: int) -> Tensor:
        """Mean NLL of the labelled tokens of the first `rows` rows (prompts ending in one name: the mean over
        prompts of each prompt's mean)."""
        count = self.labelled(rows)
        return torch.nn.functional.cross_entropy(upcast(logits[:count]), self.suffix.targets.tokens[:count])


def _prefix_cache(model: nn.Module, examples: list[Example], keys: list[int], pad: list[int]):
    """Each prompt's columns before its key run alone (a padded row in one batch would have fully masked
    queries, NaN in eager attention), their caches then stacked with zeros on the left, masked."""
    caches = []
    with torch.no_grad():
        for (ids, _), key in zip(examples, keys):
            caches.append(model(input_ids=torch.tensor([ids[:key]], device=device()), use_cache=True, logits_to_keep=1).cache
                          if key else None)  # the cache is what is wanted, not the logits
    full = next(cache for cache in caches if cache is not None)
    for index, layer in enumerate(full.layers):
        def stacked(field):
            rows = []
            for cache, p in zip(caches, pad):
                part = getattr(cache.layers[index], field) if cache is not None else None
                shape = list(getattr(layer, field).shape)
                shape[2] = p
                zeros = torch.zeros(shape, dtype=getattr(layer, field).dtype, device=device())
                rows.append(zeros if part is None else torch.cat([zeros, part], dim=2))
            return torch.cat(rows)
        layer.keys, layer.values = stacked("keys"), stacked("values")
    return full


# Deltas already optimised, per model: MEMIT's last layer is ROME's, so its per-edit deltas are ROME's (same
# prompts, layer and settings); a model is never edited in place, so a key names one optimisation.
_DELTAS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def optimise_delta(model: nn.Module, prompts: list[Example], contexts: list[Example], layer: int, cfg: ValueParams
                   ) -> tuple[Tensor, Tensor]:
    """delta [out] added to block `layer`'s MLP output at every prompt's key position (one edit's prompts), and
    k* [in], the projection's input there averaged over the prompts; computed once per model, prompts, layer
    and settings."""
    key = (layer, cfg, *(tuple((tuple(ids), tuple(labels)) for ids, labels in rows) for rows in (prompts, contexts)))
    done = _DELTAS.setdefault(model, {})
    if key not in done:
        done[key] = _optimise_delta(model, prompts, contexts, layer, cfg)
    return done[key]


def _optimise_delta(model: nn.Module, prompts: list[Example], contexts: list[Example], layer: int, cfg: ValueParams
                    ) -> tuple[Tensor, Tensor]:
    n = len(prompts)
    rows = _Suffixes(model, prompts + contexts, layer)  # the edit's prompts, then the KL contexts
    first = rows.labelled(n)  # logits from here on: each KL context's one labelled position, its key
    with _Probe(model, layer) as probe:
        with torch.no_grad():
            logits = rows.logits(probe)
            scale = probe.values[0].norm()  # the bare prompt's unedited output: all share its scale
            key = probe.keys[:n].mean(0)  # delta does not change the projection's input
            kl_ref = torch.log_softmax(upcast(logits[first:]), -1) if contexts else None
        delta = torch.zeros_like(probe.values[0], requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=cfg.lr)
        probe.delta = delta
        with torch.enable_grad():
            for _ in range(cfg.steps):
                logits = rows.logits(probe)
                nll = rows.nll(logits, n)
                if nll.item() < cfg.stop_nll:
                    break
                loss = nll + cfg.weight_decay * delta.norm() / scale**2
                if contexts and cfg.kl_factor:
                    post = torch.log_softmax(upcast(logits[first:]), -1)
                    loss = loss + cfg.kl_factor * (kl_ref.exp() * (kl_ref - post)).sum(-1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():  # ROME's clamp: delta stays within a multiple of the output's norm
                    limit = cfg.clamp_norm * scale
                    if delta.norm() > limit:
                        delta.mul_(limit / delta.norm())
    return delta.detach(), key


def rank_one_update(weight: Tensor, key: Tensor, delta: Tensor, moment: Tensor | None) -> Tensor:
    """dW [out, in] = delta (C^-1 k)^T / (k^T C^-1 k): maps k to delta, least change to typical keys.
    Without C (None), the identity: the minimum-norm update."""
    key64 = key.double()
    direction = key64 if moment is None else torch.linalg.solve(moment.double(), key64)
    return (torch.outer(delta.double(), direction) / (direction @ key64)).to(weight.dtype)


@dataclass(frozen=True)
class Rome:
    """The ROME editor: one edit, one rank-one update of block `layer`'s MLP output projection."""

    batched: ClassVar[bool] = False
    name: str
    layer: int
    value: ValueParams
    contexts: tuple[str, ...] = ()
    moment: Tensor | None = None  # C [in, in] of this layer (`layer_stats`); None: identity

    def weight_names(self, model) -> list[str]:
        return [weight_name(model, self.layer)]

    def edit(self, split: SplitForward, tokenizer, edit: Prepared, pairs: list[dict], max_len: int):
        """{projection weight: edited weight}, and no gradient steps on the weights (None)."""
        if len(pairs) != 1:
            raise EditLMError(f"rome edits one request at a time, got {len(pairs)} (use memit for batches)")
        prompts = edit_examples(tokenizer, pairs, self.contexts, max_len)
        contexts = context_examples(tokenizer, pairs[0], self.contexts, max_len)
        delta, key = optimise_delta(split.model, prompts, contexts, self.layer, self.value)
        matrix = as_matrix(split.model, self.layer)
        update = rank_one_update(matrix, key, delta, self.moment)
        return {weight_name(split.model, self.layer): in_weight_layout(split.model, self.layer, matrix + update).detach()}, None
