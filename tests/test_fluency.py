"""ROME's fluency (weighted bigram/trigram entropy) and greedy generation with swapped-in edited weights."""

import copy
import math

import pytest
import torch

from conftest import tiny_gpt2, tiny_llama
from editable_lm.fluency import generate, mean_ngram_entropy, ngram_entropy, swapped_weights, word_tokens
from editable_lm.models import top_block_parameter_names

PROMPTS = ["The theory of relativity was developed by", "Marie Curie is known for", "Trains"]


def test_word_tokens_are_words_and_punctuation():
    assert word_tokens("Hello, world!  It's 1905.") == ["Hello", ",", "world", "!", "It", "'", "s", "1905", "."]
    assert word_tokens("  ") == []


def test_ngram_entropy_by_hand():
    """Each value worked out on paper: score = (2/3·H2 + 4/3·H3) / 2 = H2/3 + 2·H3/3, entropies in bits."""
    # a b a b a: bigrams ab, ba, ab, ba (two of each: H2 = 1); trigrams aba, bab, aba (2/3, 1/3).
    h3 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy("a b a b a") == pytest.approx(1 / 3 + 2 * h3 / 3, abs=1e-12)
    assert ngram_entropy("a b a b a") == pytest.approx(0.9455, abs=1e-4)
    # 7 tokens (the final "." is one), all 6 bigrams and all 5 trigrams distinct; case is kept ("The" != "the").
    assert ngram_entropy("The cat sat on the mat.") == pytest.approx(math.log2(6) / 3 + 2 * math.log2(5) / 3, abs=1e-12)
    # a b c: two distinct bigrams (H2 = 1), one trigram (H3 = 0).
    assert ngram_entropy("a b c") == pytest.approx(1 / 3, abs=1e-12)


def test_ngram_entropy_of_short_texts_is_zero():
    """No bigrams or trigrams: entropy 0 (ROME's value for an empty distribution); one bigram has entropy 0 too."""
    for text in ["", "   ", "word", "two words", "Hi!"]:
        assert ngram_entropy(text) == 0.0


def test_repetition_lowers_entropy():
    varied = "Albert Einstein developed the theory of relativity while working at the patent office in Bern."
    repeated = "the theory of the theory of the theory of the theory of the theory of the theory."
    assert len(word_tokens(repeated)) >= len(word_tokens(varied)) - 1
    assert ngram_entropy(repeated) < ngram_entropy(varied) - 1.0
    assert ngram_entropy("the " * 20) == 0.0  # one bigram, one trigram, repeated


def test_mean_ngram_entropy_is_the_mean_over_texts():
    texts = ["a b a b a", "The cat sat on the mat.", ""]
    assert mean_ngram_entropy(texts) == pytest.approx(sum(map(ngram_entropy, texts)) / 3, abs=1e-12)
    assert mean_ngram_entropy(["a b c"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no texts"):
        mean_ngram_entropy([])


def _bits(model):
    """Every parameter's exact bit pattern (float32 as int32), and the parameter objects themselves."""
    return {n: p.detach().clone().view(torch.int32) for n, p in model.named_parameters()}, dict(model.named_parameters())


def _assert_bit_identical(model, snapshot):
    bits, objects = snapshot
    now = dict(model.named_parameters())
    assert now.keys() == bits.keys()
    for name, param in now.items():
        assert param is objects[name], name
        assert torch.equal(param.detach().view(torch.int32), bits[name]), name


def _edited(model, scale=1.0, seed=1):
    """Strongly perturbed MLP weights of the top two blocks (an "edit" that changes what the model says)."""
    g = torch.Generator().manual_seed(seed)
    return {
        name: model.get_parameter(name).detach() + scale * torch.randn(model.get_parameter(name).shape, generator=g)
        for name in top_block_parameter_names(model, 2, "mlp")
    }


@pytest.fixture(params=["gpt2", "llama"])
def model(request, tokenizer):
    build = tiny_gpt2 if request.param == "gpt2" else tiny_llama
    return build(vocab=len(tokenizer))


def test_generate_with_weights_equals_a_model_holding_them(model, tokenizer):
    """Swapped-in weights generate exactly what a separate copy whose parameters are those weights generates."""
    weights = _edited(model)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for name, value in weights.items():
            other.get_parameter(name).copy_(value)
    snapshot = _bits(model)
    swapped = generate(model, tokenizer, PROMPTS, 8, weights=weights)
    assert swapped == generate(other, tokenizer, PROMPTS, 8)
    _assert_bit_identical(model, snapshot)
    original = generate(model, tokenizer, PROMPTS, 8)
    assert original != swapped  # the swap did change what the model says
    assert original == generate(copy.deepcopy(model), tokenizer, PROMPTS, 8)
    assert len(swapped) == len(PROMPTS) and all(isinstance(text, str) for text in swapped)


def test_generate_is_greedy_and_continues_the_prompt(model, tokenizer):
    """The continuation is the argmax chain after the prompt (prompt not repeated), the same each call."""
    prompt = PROMPTS[0]
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        for _ in range(4):
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    expected = tokenizer.decode(ids[0, -4:], skip_special_tokens=True).strip()
    assert generate(model, tokenizer, [prompt], 4) == [expected] == generate(model, tokenizer, [prompt], 4)


def test_generate_restores_weights_and_mode_after_an_exception(model, tokenizer, monkeypatch):

    weights = _edited(model)
    model.train()
    snapshot = _bits(model)
    seen = {}

    def failing_generate(**kwargs):
        seen["training"] = model.training
        seen["swapped"] = all(torch.equal(model.get_parameter(n), v) for n, v in weights.items())
        raise RuntimeError("generation failed")

    monkeypatch.setattr(model, "generate", failing_generate)
    with pytest.raises(RuntimeError, match="generation failed"):
        generate(model, tokenizer, PROMPTS, 4, weights=weights)
    assert seen == {"training": False, "swapped": True}
    _assert_bit_identical(model, snapshot)
    assert model.training and all(m.training for m in model.modules())


def test_swapped_weights_restores_bits_after_an_exception(model):

    weights = _edited(model)
    snapshot = _bits(model)
    with pytest.raises(KeyError):
        with swapped_weights(model, weights) as swapped:
            assert swapped is model
            for name, value in weights.items():
                assert torch.equal(model.get_parameter(name), value)
            raise KeyError("inside the block")
    _assert_bit_identical(model, snapshot)
    with swapped_weights(model, None):
        _assert_bit_identical(model, snapshot)
    _assert_bit_identical(model, snapshot)


def test_swapped_weights_checks_before_changing_anything(model):

    weights = _edited(model)
    first = next(iter(weights))
    snapshot = _bits(model)
    bad = [
        ({**weights, "no.such.weight": torch.zeros(1)}, "not a parameter"),
        ({**weights, first: weights[first][:1]}, "got"),  # would broadcast into copy_
        ({**weights, first: weights[first].double()}, "float64"),
    ]
    for case, message in bad:
        with pytest.raises(ValueError, match=message):
            with swapped_weights(model, case):
                pytest.fail("the block must not run")
        _assert_bit_identical(model, snapshot)
