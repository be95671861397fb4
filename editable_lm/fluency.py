"""Fluency of generated text, as ROME measures it, and greedy generation with edited weights.

ROME (Meng et al. 2022, "Locating and Editing Factual Associations in GPT") scores a generation's
fluency by its weighted bigram and trigram entropy: a model an edit has damaged tends to repeat
itself, and repetition lowers the entropy of the text's n-gram distribution.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
from torch import Tensor

# ROME's n-gram orders and their weights: the score is the mean of 2/3·H2 and 4/3·H3.
NGRAM_WEIGHTS = {2: 2 / 3, 3: 4 / 3}

_WORD = re.compile(r"\w+|[^\w\s]")


def word_tokens(text: str) -> list[str]:
    """Words and single punctuation marks, in order: "Hi, you!" -> ["Hi", ",", "you", "!"].

    ROME tokenises with `nltk.word_tokenize`, whose punkt data cannot be downloaded here; this regex
    agrees with it on plain words and punctuation but splits contractions differently ("don't" ->
    "don", "'", "t" instead of "do", "n't"). Case is kept, as in ROME.
    """
    return _WORD.findall(text)


def _entropy_bits(counts: Counter) -> float:
    """Shannon entropy in bits of the frequency distribution `counts`; 0.0 when it is empty."""
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def ngram_entropy(text: str) -> float:
    """ROME's fluency of one text: mean over n in (2, 3) of weight_n · H_n, weights (2/3, 4/3).

    H_n is the entropy in bits of the frequency distribution of the text's word n-grams (tokens from
    `word_tokens`, a regex stand-in for `nltk.word_tokenize`). A text with no n-grams of some order
    (fewer than n tokens) has H_n = 0.0, as ROME's code gives for an empty distribution; so a text of
    fewer than 3 tokens scores 0.0 (with 2 tokens its one bigram has entropy 0 too).
    ROME scores the prompt with its sampled continuation; the callers here score greedy continuations alone.
    """
    tokens = word_tokens(text)
    weighted = [
        weight * _entropy_bits(Counter(zip(*(tokens[i:] for i in range(n))))) for n, weight in NGRAM_WEIGHTS.items()
    ]
    return sum(weighted) / len(weighted)


def mean_ngram_entropy(texts: list[str]) -> float:
    """ROME's fluency of several generations: the mean of `ngram_entropy` over the texts."""
    if not texts:
        raise ValueError("mean_ngram_entropy: no texts")
    return sum(ngram_entropy(text) for text in texts) / len(texts)


@contextmanager
def swapped_weights(model: torch.nn.Module, weights: Mapping[str, Tensor] | None) -> Iterator[torch.nn.Module]:
    """The model with `weights` (parameter name -> tensor) copied into its parameters, for the block's duration.

    The original values are restored exactly (bit for bit, into the same parameter objects) on exit,
    also when the block raises. Every name must be a parameter of the model with the same shape and
    dtype (checked before anything is changed; a mismatch is a ValueError). None swaps nothing.
    """
    weights = dict(weights or {})
    params = {}
    for name, value in weights.items():
        try:
            param = model.get_parameter(name)
        except AttributeError:
            raise ValueError(f"swapped_weights: {name!r} is not a parameter of the model") from None
        if value.shape != param.shape or value.dtype != param.dtype:
            raise ValueError(
                f"swapped_weights: {name}: got {tuple(value.shape)} {value.dtype}, "
                f"the model has {tuple(param.shape)} {param.dtype}"
            )
        params[name] = param
    with torch.no_grad():
        originals = {name: param.detach().clone() for name, param in params.items()}
        try:
            for name, param in params.items():
                param.copy_(weights[name])
            yield model
        finally:
            for name, param in params.items():
                param.copy_(originals[name])


def generate(
    model, tokenizer, prompts: list[str], max_new_tokens: int, weights: Mapping[str, Tensor] | None = None
) -> list[str]:
    """Greedy continuation of each prompt (without the prompt), with `weights` swapped in if given.

    One prompt at a time (no padding, so a prompt's continuation does not depend on the others),
    through Hugging Face's `model.generate` with the KV cache, no sampling and one beam, under
    `torch.no_grad`. The model runs in eval mode (no dropout); its weights and each module's
    train/eval mode are as before afterwards, also after an exception (`swapped_weights`).
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    modes = {module: module.training for module in model.modules()}
    outputs = []
    try:
        model.eval()
        with torch.no_grad(), swapped_weights(model, weights):
            for prompt in prompts:
                ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
                if ids["input_ids"].shape[1] == 0:
                    raise ValueError(f"generate: the prompt {prompt!r} has no tokens")
                out = model.generate(
                    **ids, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                    pad_token_id=pad_id,
                )
                outputs.append(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    finally:
        for module, training in modes.items():
            module.training = training
    return outputs
