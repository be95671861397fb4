"""Run a causal LM in two parts: the blocks an edit cannot change once per input, the rest as often as needed.

An edit changes only the edit parameters (by default the MLPs of the top 3 blocks). Every block
below the lowest one it touches gives the same output before and after the edit, in every inner
step and for every probe, so `SplitForward.prepare` runs those blocks once and keeps their output
together with what the upper blocks need (attention mask, rotary embeddings, positions: whatever
the model itself passes its blocks). `SplitForward.logits` then runs only the upper blocks, with
edited weights swapped in through `torch.func.functional_call`, and applies the final norm and the
LM head only at the positions a loss or metric reads.

`split=False` keeps the plain full-model path (every block, every call), so that tests can compare
the two and the benchmark can time both.

Models that hold the same lowest blocks (the evaluated checkpoints: training changes only the top
`train.outer_blocks`) can share those blocks' outputs through a `SharedLower`: the first model to
prepare an input keeps the input of the first block that differs, the others start there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from editable_lm.errors import EditLMError
from editable_lm.models import decoder_blocks

IGNORE = -100  # label of tokens that no loss is taken on

Batch = dict[str, Tensor]  # input_ids, attention_mask, labels: each [B, T]


@dataclass(frozen=True)
class Targets:
    """The labelled next-token positions of a batch, in row-major order."""

    where: Tensor  # [B, T] bool: positions whose next token is labelled
    tokens: Tensor  # [N] the labelled next tokens
    rows: Tensor  # [N] the example each belongs to
    n_rows: int  # B

    @classmethod
    def of(cls, labels: Tensor) -> Targets:
        where = F.pad(labels[:, 1:] != IGNORE, (0, 1), value=False)
        rows, cols = where.nonzero(as_tuple=True)
        return cls(where, labels[rows, cols + 1], rows, labels.shape[0])


@dataclass(frozen=True)
class Prepared:
    """A batch ready for the upper blocks: on the split path with the cached lower-block output."""

    batch: Batch
    targets: Targets
    hidden: Tensor | None = None  # input of the first upper block [B, T, D]; None on the full path
    args: tuple = ()  # the rest of what the model passes its blocks (masks, rotary embeddings, ...)
    kwargs: dict = field(default_factory=dict)


@dataclass
class SharedLower:
    """Outputs of the lowest `depth` blocks, shared by models whose weights agree up to there.

    `outputs` maps an input batch to what block `depth` receives (hidden states, args, kwargs).
    """

    depth: int
    outputs: dict = field(default_factory=dict)

    @classmethod
    def of(cls, models: list[nn.Module]) -> SharedLower:
        """The deepest block below which every model has the same weights and buffers, bit for bit."""
        first = dict(_state(models[0]))
        prefix, blocks = decoder_blocks(models[0])
        depth = len(blocks)
        for model in models[1:]:
            for name, value in _state(model):
                if name not in first or not torch.equal(first[name], value):
                    index = _block_index(prefix, name)
                    depth = min(depth, 0 if index is None else index)  # outside the blocks: nothing is shared
        return cls(depth)

    @staticmethod
    def key(batch: Batch) -> tuple:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        return tuple(ids.shape), ids.cpu().numpy().tobytes(), mask.cpu().numpy().tobytes()


def _state(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    yield from model.named_parameters()
    yield from model.named_buffers()


class _Stop(Exception):
    """Raised by the hook on the first upper block: the lower part is done."""


class SplitForward:
    """A causal LM split below the lowest block that the weights `names` live in.

    Parameters passed to `logits` must be among `names` (the edit parameters).
    """

    def __init__(self, model: nn.Module, names: list[str], split: bool = True, shared: SharedLower | None = None):
        self.model, self.names, self.split, self.shared = model, list(names), split, shared
        self.prefix, self.blocks = decoder_blocks(model)
        indices = [_block_index(self.prefix, name) for name in self.names]
        if None in indices:
            outside = self.names[indices.index(None)]
            raise EditLMError(f"{outside}: edit weights must lie inside the transformer blocks ({self.prefix}.<i>)")
        self.start = min(indices, default=len(self.blocks))
        self.norm, self.head = _final_norm(model), model.get_output_embeddings()
        self._head_t: tuple[tuple, Tensor] | None = None  # (weight version, contiguous transpose) for `_few_logits`

    def prepare(self, batch: Batch) -> Prepared:
        """Run the blocks below `start` once (on the split path) and keep their output."""
        return self.prepare_many([batch])[0]

    def prepare_many(self, batches: list[Batch]) -> list[Prepared]:
        """`prepare` for each batch, their tokens embedded in one lookup: when the embeddings train, the
        lookup's backward builds a dense vocabulary-sized gradient, once instead of once per batch."""
        if not self.split:
            return [Prepared(batch, Targets.of(batch["labels"])) for batch in batches]
        depth = min(self.shared.depth, self.start) if self.shared else 0
        cache = self.shared.outputs if depth else {}  # below `depth` every model gives the same output
        keys = [SharedLower.key(batch) for batch in batches]
        todo = {key: batch for key, batch in zip(keys, batches) if key not in cache}
        if todo:
            ids = [batch["input_ids"] for batch in todo.values()]
            embedded = self.model.get_input_embeddings()(torch.cat([i.flatten() for i in ids]))
            for (key, batch), embeds in zip(todo.items(), embedded.split([i.numel() for i in ids])):
                cache[key] = self._block_input(batch, depth, embeds.view(*batch["input_ids"].shape, -1))
        prepared = []
        for key, batch in zip(keys, batches):
            hidden, args, kwargs = cache[key]
            hidden = self._run_blocks(hidden, args, kwargs, depth, self.start)
            prepared.append(Prepared(batch, Targets.of(batch["labels"]), hidden, args, kwargs))
        return prepared

    def _block_input(self, batch: Batch, index: int, embeds: Tensor) -> tuple[Tensor, tuple, dict]:
        """What block `index` receives when the model runs on `batch` with token embeddings `embeds`:
        hidden states, other args, kwargs."""
        captured = {}

        def stop(module, args, kwargs):
            captured["args"], captured["kwargs"] = args, kwargs
            raise _Stop

        handle = self.blocks[index].register_forward_pre_hook(stop, with_kwargs=True)
        try:
            # No cache: the captured arguments are replayed for every upper-block run.
            self.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        args, kwargs = captured["args"], dict(captured["kwargs"])
        hidden = args[0] if args else kwargs.pop("hidden_states")
        return hidden, tuple(args[1:]), kwargs

    def logits(self, inputs: Prepared, params: Mapping[str, Tensor] | None = None, where: Tensor | None = None) -> Tensor:
        """Logits [B, T, V], or [N, V] at the positions `where` [B, T] marks, with `params` swapped in."""
        return self.logits_many([(inputs, params, where)])[0]

    def logits_many(self, requests: list[tuple[Prepared, Mapping[str, Tensor] | None, Tensor | None]]) -> list[Tensor]:
        """`logits(inputs, params, where)` for each request. On the split path the LM head runs once over the
        rows of all of them: when it trains, each application adds a dense vocabulary-sized weight gradient."""
        if not self.split:
            full = [self._full_logits(inputs, params) for inputs, params, _ in requests]
            return [logits if where is None else logits[where] for logits, (_, _, where) in zip(full, requests)]
        rows, shapes = [], []
        for inputs, params, where in requests:
            hidden = self._upper(inputs, params)
            shapes.append(hidden.shape[:-1] if where is None else None)
            # [N, D] at labelled positions: the LM head costs as much as several blocks per position
            rows.append(hidden.flatten(0, 1) if where is None else hidden[where])
        hidden = self.norm(torch.cat(rows))
        few = all(shape is None for shape in shapes)  # only labelled positions: a handful of rows
        logits = self._few_logits(hidden) if few else self.head(hidden)
        pieces = logits.split([len(r) for r in rows])
        return [piece if shape is None else piece.view(*shape, -1) for piece, shape in zip(pieces, shapes)]

    def _few_logits(self, hidden: Tensor) -> Tensor:
        """The LM head on a few rows [N, D]. On this hardware MKL computes `hidden @ W.T` for a small N up to
        ~8x slower than `W @ hidden.T`, and its backward `grad @ W` ~4x slower than `W.T @ grad.T` from a
        contiguous W.T: a frozen head (the evaluated models; training with `outer_blocks` > 0) takes those
        layouts, with W.T cached per weight version. A trained head keeps the module."""
        weight, bias = self.head.weight, getattr(self.head, "bias", None)
        if weight.requires_grad or bias is not None:
            return self.head(hidden)
        version = (weight.data_ptr(), weight._version, weight.dtype)
        if self._head_t is None or self._head_t[0] != version:
            self._head_t = version, weight.detach().T.contiguous()
        return _FrozenProduct.apply(hidden, weight.detach(), self._head_t[1])

    def logits_in_chunks(
        self, inputs: Prepared, params: Mapping[str, Tensor] | None = None, tokens: int = 128
    ) -> Iterator[tuple[slice, Tensor]]:
        """(rows, logits [rows, T, V]) for about `tokens` positions at a time: the upper blocks run once,
        the LM head per chunk, so that each 49k-wide chunk stays small enough to reuse its memory."""
        n_rows, length = inputs.batch["input_ids"].shape
        step = max(1, tokens // length)
        hidden = self._upper(inputs, params) if self.split else None
        full = self._full_logits(inputs, params) if not self.split else None
        for start in range(0, n_rows, step):
            rows = slice(start, start + step)
            yield rows, (self.head(self.norm(hidden[rows])) if self.split else full[rows])

    def _full_logits(self, inputs: Prepared, params: Mapping[str, Tensor] | None) -> Tensor:
        batch = inputs.batch
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if params:
            return functional_call(self.model, dict(params), args=(), kwargs=kwargs, strict=False)["logits"]
        return self.model(**kwargs).logits

    def _upper(self, inputs: Prepared, params: Mapping[str, Tensor] | None) -> Tensor:
        """Output of the last block [B, T, D], from the cached input of block `start`."""
        return self._run_blocks(inputs.hidden, inputs.args, inputs.kwargs, self.start, len(self.blocks), params)

    def _run_blocks(
        self, hidden: Tensor, args: tuple, kwargs: dict, first: int, end: int, params: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        """Blocks `first` .. `end - 1` on `hidden`, with `params` swapped in where they belong."""
        params = dict(params or {})
        for index in range(first, end):
            scope = f"{self.prefix}.{index}."
            own = {name[len(scope) :]: value for name, value in params.items() if name.startswith(scope)}
            block = self.blocks[index]
            if own:
                hidden = functional_call(block, own, args=(hidden, *args), kwargs=kwargs, strict=False)
            else:
                hidden = block(hidden, *args, **kwargs)
        return hidden

    def target_logits(self, inputs: Prepared, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """Logits [N, V] at the labelled positions only (see `Targets`)."""
        return self.logits(inputs, params, inputs.targets.where)


class _FrozenProduct(torch.autograd.Function):
    """rows [N, K] -> rows @ M.T [N, J] for a frozen M [J, K], computed as (M @ rows.T).T; `m_t` is M.T kept
    contiguous. The backward is the same product with M and M.T swapped, so it differentiates to any order
    (MAML's inner loop differentiates through the LM head's backward)."""

    @staticmethod
    def forward(ctx, rows: Tensor, m: Tensor, m_t: Tensor) -> Tensor:
        ctx.save_for_backward(m, m_t)
        return (m @ rows.T).T.contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor):
        m, m_t = ctx.saved_tensors
        return _FrozenProduct.apply(grad, m_t, m), None, None


def _block_index(prefix: str, name: str) -> int | None:
    if not name.startswith(prefix + "."):
        return None
    head = name[len(prefix) + 1 :].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _final_norm(model: nn.Module) -> nn.Module:
    """The norm between the last block and the LM head (Llama `norm`, GPT-2 `ln_f`)."""
    base = model.base_model
    for name in ("norm", "ln_f", "final_layer_norm"):
        if isinstance(getattr(base, name, None), nn.Module):
            return getattr(base, name)
    raise EditLMError(f"{type(model).__name__}: found no final norm (norm, ln_f, final_layer_norm) to split the model at")


def upcast(logits: Tensor) -> Tensor:
    """At least float32 for softmax, without cutting float64 down."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))
