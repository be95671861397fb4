"""What an edit should leave alone: the unedited model's predictions on held-out passages (`Reference`), and
what edited weights did to them (`locality`: perplexity drawdown, KL(pre || post), top-1 agreement)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

from editable_lm.editing import label_logprobs
from editable_lm.metrics import perplexity, relative_drawdown
from editable_lm.split_forward import Prepared, SplitForward, upcast
from editable_lm.training import encode_passages


@dataclass(frozen=True)
class Reference:
    """Passages and the unedited model's predictions on them: what an edit should leave alone.

    `inputs` holds the passages' lower-block activations, computed once per model.
    """

    inputs: Prepared
    logprobs: Tensor  # [B, T, V] next-token log-probabilities of the unedited model
    probs: Tensor  # [B, T, V] the same, exponentiated once
    top1: Tensor  # [B, T] its most likely next tokens
    ppl: float

    @classmethod
    def of(cls, inputs: Prepared, logprobs: Tensor) -> Reference:
        return cls(inputs, logprobs, logprobs.exp(), logprobs.argmax(-1), perplexity(logprobs, inputs.batch["labels"]))

    def kl(self, logprobs: Tensor, rows: slice = slice(None)) -> Tensor:
        """Summed KL(unedited || edited) over the real tokens of `rows`, from edited log-probabilities [rows, T, V].

        A dot product per position instead of elementwise passes: with a 49k-word vocabulary
        those cost as much as the upper blocks.
        """
        mask = self.inputs.batch["attention_mask"][rows].to(logprobs.dtype)
        gap = (self.logprobs[rows] - logprobs).flatten(0, 1).unsqueeze(2)  # [n*T, V, 1]
        per_token = torch.bmm(self.probs[rows].flatten(0, 1).unsqueeze(1), gap).view(mask.shape)
        return (per_token * mask).sum()

    def mean_kl(self, logprobs: Tensor) -> Tensor:
        """`kl` over every row, averaged over real tokens."""
        return self.kl(logprobs) / self.inputs.batch["attention_mask"].sum()


def predict(model: SplitForward, inputs: Prepared, params: Mapping[str, Tensor] | None = None) -> Tensor:
    """Next-token log-probabilities [B, T, V] at every position."""
    return torch.log_softmax(upcast(model.logits(inputs, params)), dim=-1)


@torch.no_grad()
def reference(model: SplitForward, tokenizer, passages: list[dict], max_len: int) -> Reference:
    """Encode passages and record the unedited model's predictions on them."""
    inputs = model.prepare(encode_passages(passages, tokenizer, max_len))
    return Reference.of(inputs, predict(model, inputs))


@torch.no_grad()
def locality(model: SplitForward, ref: Reference, params: Mapping[str, Tensor], chunk_tokens: int = 128) -> dict[str, float]:
    """What an edit did to unrelated passages: perplexity drawdown, KL(pre || post), top-1 agreement.

    Read chunk by chunk of passages (`logits_in_chunks`), never holding all edited logits at once.
    """
    batch = ref.inputs.batch
    nll = labelled = kl = agree = 0.0
    for rows, logits in model.logits_in_chunks(ref.inputs, params, chunk_tokens):
        logprobs = torch.log_softmax(upcast(logits), dim=-1)
        picked, mask = label_logprobs(logprobs, batch["labels"][rows])
        nll, labelled = nll - picked.sum().item(), labelled + mask.sum().item()
        kl += ref.kl(logprobs, rows).item()
        same = (logprobs.argmax(-1) == ref.top1[rows]) & batch["attention_mask"][rows].bool()
        agree += same.sum().item()
    tokens = batch["attention_mask"].sum().item()
    mean_nll = nll / labelled
    ppl = math.exp(mean_nll) if mean_nll < 700 else math.inf  # an edit can wreck the model: past exp's range
    return {
        "ppl_drawdown": relative_drawdown(ref.ppl, ppl),
        "ppl_post": ppl,  # absolute: a model made worse before any edit can look local relative to itself
        "kl": kl / tokens,
        "top1_agreement": agree / tokens,
    }
