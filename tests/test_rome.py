"""ROME, MEMIT and their second moments on tiny random models, against closed forms computed independently."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_gpt2, tiny_llama
from editable_lm.editors.memit import Memit, spread_update
from editable_lm.editors.rome import (
    Rome, ValueParams, _Probe, _Suffixes, context_examples, edit_examples, key_positions, optimise_delta, prepare,
    mean_per_pair, rank_one_update,
)
from editable_lm.errors import EditLMError
from editable_lm.layer_stats import (
    as_matrix, in_weight_layout, load_moments, projection_name, save_moments, second_moments, weight_name,
)
from editable_lm.metrics import sequence_logprob
from editable_lm.split_forward import SplitForward
from editable_lm.training import encode_edits

MAX_LEN = 32
PAIR = {"id": 0, "prefix": "The Principia was written by", "name": "Isaac Newton", "new_name": "Werner Heisenberg"}
PAIRS = [
    PAIR,
    {"id": 1, "prefix": "Radioactivity was studied in Paris by", "name": "Marie Curie", "new_name": "Niels Bohr"},
    {"id": 2, "prefix": "The lectures on physics were given by", "name": "Richard Feynman", "new_name": "Paul Dirac"},
]
CONTEXTS = ("The river flows to the sea.", "Bread is baked from flour.")
TEXTS = [{"text": f"Passage {i}: the {w} of the {v} was seen by {i * 7} people near the old town."}
         for i in range(24) for w, v in [("river", "valley"), ("tower", "castle")]]
# The random tiny models' MLP outputs are ~100x smaller than their residual stream: ROME's clamp (4x the output's
# norm) and weight decay (relative to its squared norm) would hold delta near zero, so they are loosened here.
VALUE = ValueParams(steps=30, clamp_norm=1e3, weight_decay=0.0)
FAMILIES = {"gpt2": lambda vocab: tiny_gpt2(vocab=vocab), "llama": lambda vocab: tiny_llama(vocab=vocab, layers=3, initializer_range=0.2)}


def tiny(family: str, tokenizer):
    return FAMILIES[family](len(tokenizer)).double().requires_grad_(False)


def split_at(lm, layers) -> SplitForward:
    return SplitForward(lm, [weight_name(lm, layer) for layer in layers])


@torch.no_grad()
def keys_and_values(split: SplitForward, prepared, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The projection's inputs [B, in] and outputs [B, out] at each row's key position: the whole prompts through
    the split model (independent of the optimisation's cached suffix runs)."""
    with _Probe(split.model, layer) as probe:
        probe.at = key_positions(prepared)
        split._run_blocks(prepared.hidden, prepared.args, prepared.kwargs, split.start, layer + 1)
        return probe.keys, probe.values


def moment_of(lm, tokenizer, layer: int):
    moments, _ = second_moments(lm, tokenizer, TEXTS, [layer], n_tokens=10_000, seq_len=MAX_LEN)
    return moments[layer] + 1e-6 * torch.eye(moments[layer].shape[0], dtype=torch.float64)  # full rank for C^-1


def logp_new(split: SplitForward, tokenizer, pairs, params=None) -> torch.Tensor:
    prepared = split.prepare(encode_edits(pairs, tokenizer, MAX_LEN))
    return sequence_logprob(split.target_logits(prepared, params), prepared.targets)


@pytest.mark.parametrize("family", FAMILIES)
def test_second_moments_equal_hooked_activations(family, tokenizer):
    lm = tiny(family, tokenizer)
    layer = 1
    keys = []
    module = lm.get_submodule(projection_name(lm, layer))
    handle = module.register_forward_pre_hook(lambda m, args: keys.append(args[0]))
    from editable_lm.training import encode_passages

    batch = encode_passages(TEXTS[:5], tokenizer, MAX_LEN)
    with torch.no_grad():
        lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    handle.remove()
    k = keys[0][batch["attention_mask"].bool()]  # real tokens only
    moments, n = second_moments(lm, tokenizer, TEXTS[:5], [layer], n_tokens=10_000, seq_len=MAX_LEN, batch_size=2)
    assert n == len(k)
    torch.testing.assert_close(moments[layer], k.T @ k / len(k))


def test_second_moments_stop_at_the_token_budget(tokenizer):
    lm = tiny("llama", tokenizer)
    _, n = second_moments(lm, tokenizer, TEXTS, [0, 2], n_tokens=50, seq_len=MAX_LEN, batch_size=2)
    assert 50 <= n < 50 + 2 * MAX_LEN


def test_moments_round_trip_and_missing_layer(tmp_path, tokenizer):
    lm = tiny("gpt2", tokenizer)
    moments, n = second_moments(lm, tokenizer, TEXTS[:4], [0, 1], n_tokens=100, seq_len=MAX_LEN)
    save_moments(tmp_path / "c.safetensors", moments, n)
    torch.testing.assert_close(load_moments(tmp_path / "c.safetensors", [1])[1], moments[1])
    with pytest.raises(EditLMError, match=r"layer\(s\) \[2\]"):
        load_moments(tmp_path / "c.safetensors", [2])


@pytest.mark.parametrize("family", FAMILIES)
def test_rank_one_update_is_the_constrained_least_squares_solution(family, tokenizer):
    lm = tiny(family, tokenizer)
    layer, split = 1, split_at(lm, [1])
    c = moment_of(lm, tokenizer, layer)
    prompts = prepare(split, tokenizer, edit_examples(tokenizer, [PAIR], CONTEXTS, MAX_LEN))
    keys, _ = keys_and_values(split, prompts, layer)
    k = keys.mean(0)
    w = as_matrix(lm, layer)
    delta = torch.randn(w.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    dw = rank_one_update(w, k, delta, c)
    torch.testing.assert_close((w + dw) @ k, w @ k + delta)  # W' k* = v*
    assert torch.linalg.matrix_rank(dw).item() == 1
    # Independently: Y = dW C^1/2 of least norm with Y (C^-1/2 k) = delta, by least squares; dW = Y C^-1/2.
    vals, vecs = torch.linalg.eigh(c)
    c_half, c_inv_half = vecs @ torch.diag(vals.sqrt()) @ vecs.T, vecs @ torch.diag(vals.rsqrt()) @ vecs.T
    a = (c_inv_half @ k).unsqueeze(0)  # [1, in]
    y = torch.linalg.lstsq(a, delta.unsqueeze(0), driver="gelsd").solution.T  # [out, in]
    torch.testing.assert_close(dw, y @ c_inv_half)
    other = dw + torch.outer(torch.randn(w.shape[0], dtype=torch.float64), torch.linalg.svd(a).Vh[1] @ c_inv_half)
    torch.testing.assert_close(other @ k, dw @ k)  # another solution of the constraint ...
    assert torch.linalg.norm(other @ c_half) > torch.linalg.norm(dw @ c_half)  # ... that changes typical keys more


@pytest.mark.parametrize("family", FAMILIES)
def test_rome_makes_the_new_name_likely_and_touches_one_weight(family, tokenizer):
    lm = tiny(family, tokenizer)
    split = split_at(lm, [1])
    editor = Rome("rome", 1, VALUE, CONTEXTS, moment_of(lm, tokenizer, 1))
    weights, _ = editor.edit(split, tokenizer, None, [PAIR], MAX_LEN)
    assert list(weights) == editor.weight_names(lm) == [weight_name(lm, 1)]
    before, after = logp_new(split, tokenizer, [PAIR]), logp_new(split, tokenizer, [PAIR], weights)
    assert after.item() > before.item() + 1.0
    assert torch.linalg.matrix_rank(weights[weight_name(lm, 1)] - lm.get_parameter(weight_name(lm, 1))).item() == 1


def test_delta_lowers_the_nll_within_the_clamp(tokenizer):
    lm = tiny("llama", tokenizer)
    split = split_at(lm, [1])
    examples = edit_examples(tokenizer, [PAIR], CONTEXTS, MAX_LEN)
    keys, values = keys_and_values(split, prepare(split, tokenizer, examples), 1)
    delta, key = optimise_delta(lm, examples, [], 1, ValueParams(steps=10, clamp_norm=0.5, stop_nll=0.0))
    torch.testing.assert_close(key, keys.mean(0))  # k*, read on the way
    assert delta.norm() <= 0.5 * values[-1].norm() * (1 + 1e-9)
    assert delta.abs().sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_prefix_logits_equal_the_whole_prompt_run(family, tokenizer):
    """The optimisation runs only each prompt's suffix on cached prefix keys/values, and only the blocks from
    the edited one up: the logits it sees at the labelled positions, delta added, equal those of the whole
    prompt through the whole model with delta added at the key position."""
    lm = tiny(family, tokenizer)
    split = split_at(lm, [0])  # every block runs on the whole prompt
    examples = edit_examples(tokenizer, [PAIR], CONTEXTS, MAX_LEN)
    delta = torch.randn(lm.config.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with _Probe(lm, 1) as probe:
        probe.delta = delta
        suffixes = _Suffixes(lm, examples, 1)
        fast, fast_again = suffixes.logits(probe), suffixes.logits(probe)
        whole = []
        for ids, labels in examples:
            batch = prepare(split, tokenizer, [(ids, labels)])
            probe.at = key_positions(batch)
            whole.append(split.target_logits(batch))
    # Llama's eager attention takes its softmax in float32: a padded row differs from a lone one there
    torch.testing.assert_close(fast, torch.cat(whole), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, fast_again)  # the cache is back at the prefix after each call


def test_rome_refuses_a_batch(tokenizer):
    lm = tiny("llama", tokenizer)
    with pytest.raises(EditLMError, match="rome edits one request at a time, got 2"):
        Rome("rome", 1, ValueParams()).edit(split_at(lm, [1]), tokenizer, None, PAIRS[:2], MAX_LEN)


@pytest.mark.parametrize("family", FAMILIES)
def test_memit_with_one_layer_and_one_edit_is_rome(family, tokenizer):
    lm = tiny(family, tokenizer)
    split, c = split_at(lm, [1]), moment_of(lm, tokenizer, 1)
    value = ValueParams(steps=5)
    rome = Rome("rome", 1, value, CONTEXTS, c).edit(split, tokenizer, None, [PAIR], MAX_LEN)[0][weight_name(lm, 1)]
    w = lm.get_parameter(weight_name(lm, 1))
    prompts = prepare(split, tokenizer, edit_examples(tokenizer, [PAIR], CONTEXTS, MAX_LEN))
    k = keys_and_values(split, prompts, 1)[0].mean(0)
    q = k @ torch.linalg.solve(c, k)  # k^T C^-1 k
    # lambda near 0 tends to ROME; not 1e-6: (lambda C + k k^T) is then so ill-conditioned that float64 rounding,
    # which differs between CPUs, is amplified to ~1e-7 (1.6e-7 measured on an Intel Xeon; at 1e-3 it is within 1e-7)
    for lam in (1e-3, 0.5, 10.0):
        memit = Memit("memit", (1,), value, lam, CONTEXTS, {1: c}).edit(split, tokenizer, None, [PAIR], MAX_LEN)[0][weight_name(lm, 1)]
        torch.testing.assert_close(memit - w, (rome - w) * q / (lam + q))  # Sherman-Morrison: same direction, scaled
    torch.testing.assert_close(memit - w, (rome - w) * q / (10.0 + q))


def test_spread_update_solves_the_normal_equations():
    g = torch.Generator().manual_seed(1)
    k, r = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    c = a @ a.T / 6 + 0.1 * torch.eye(6, dtype=torch.float64)
    dw = spread_update(k, r, c, 2.0)
    # dW minimises ||dW K^T - R^T||^2 + 2 tr(dW C dW^T): its gradient vanishes there
    grad = (dw @ k.T - r.T) @ k + 2.0 * dw @ c
    torch.testing.assert_close(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("family", FAMILIES)
def test_memit_edits_a_batch_over_several_layers(family, tokenizer):
    lm = tiny(family, tokenizer)
    layers = (1, 2)
    split = split_at(lm, layers)
    moments = {layer: moment_of(lm, tokenizer, layer) for layer in layers}
    editor = Memit("memit", layers, VALUE, 1e-3, CONTEXTS, moments)
    weights, _ = editor.edit(split, tokenizer, None, PAIRS, MAX_LEN)
    assert sorted(weights) == sorted(editor.weight_names(lm))
    gain = logp_new(split, tokenizer, PAIRS, weights) - logp_new(split, tokenizer, PAIRS)
    assert (gain > 0.5).all(), gain


def memit_by_the_book(lm, tokenizer, layers, lam, moments, pairs, value: ValueParams) -> dict:
    """MEMIT's Algorithm 1, independently of the editor's shared start and carried block inputs: each prompt alone
    through the whole Hugging Face model with the blocks below already updated, hooks reading the projection's
    input (keys: the mean over an edit's prompts) and the last block's output at the key position (at the edit's
    bare prompt, as MEMIT's code reads z); targets = unedited output + each edit's delta."""
    from torch.func import functional_call

    from editable_lm.split_forward import IGNORE

    examples = edit_examples(tokenizer, pairs, CONTEXTS, MAX_LEN)
    last_block = lm.get_submodule(projection_name(lm, layers[-1]).rsplit(".mlp.", 1)[0])

    def read(layer, params):
        keys, outs = [], []
        h1 = lm.get_submodule(projection_name(lm, layer)).register_forward_pre_hook(lambda m, a: keys.append(a[0][0]))
        h2 = last_block.register_forward_hook(lambda m, a, o: outs.append((o[0] if isinstance(o, tuple) else o)[0]))
        with torch.no_grad():
            for ids, labels in examples:
                key = next(i for i in range(1, len(labels)) if labels[i] != IGNORE) - 1
                functional_call(lm, params, args=(), kwargs={"input_ids": torch.tensor([ids])}, strict=False)
                keys[-1], outs[-1] = keys[-1][key], outs[-1][key]
        h1.remove()
        h2.remove()
        return mean_per_pair(torch.stack(keys), len(pairs)), torch.stack(outs)[:: 1 + len(CONTEXTS)]  # bare rows

    deltas = torch.stack([optimise_delta(lm, edit_examples(tokenizer, [pair], CONTEXTS, MAX_LEN),
                                         context_examples(tokenizer, pair, CONTEXTS, MAX_LEN), layers[-1], value)[0]
                          for pair in pairs])
    targets = read(layers[0], {})[1] + deltas
    params = {}
    for index, layer in enumerate(layers):
        k, out = read(layer, params)
        r = (targets - out) / (len(layers) - index)
        c = moments[layer]
        dw = r.T @ k @ torch.linalg.inv(lam * c + k.T @ k)
        params[weight_name(lm, layer)] = in_weight_layout(lm, layer, as_matrix(lm, layer) + dw)
    return params


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rows_per_batch", [2, 50])
def test_memit_equals_its_algorithm_step_by_step_and_shares_its_start_across_lambdas(family, rows_per_batch, tokenizer,
                                                                                     monkeypatch):
    """Over 3 blocks and 3 edits the editor's update equals MEMIT's Algorithm 1 computed from the whole model at
    every step (float64), with its 9 prompts in one batch or in batches of 2 by length (then read back in their
    own order); a second lambda on the same model reuses the start (no new delta, no new prompt run) and gets
    what a fresh model's editor gets, bit for bit."""
    from editable_lm.editors import memit as memit_module, rome as rome_module

    monkeypatch.setattr(memit_module, "ROWS_PER_BATCH", rows_per_batch)

    layers, value = (0, 1, 2), ValueParams(steps=5, clamp_norm=1e3, weight_decay=0.0)  # a few steps: any delta will do
    lm = tiny(family, tokenizer)
    moments = {layer: moment_of(lm, tokenizer, layer) for layer in layers}
    weights = {}
    for lam in (0.5, 2.0):
        weights[lam], _ = Memit("memit", layers, value, lam, CONTEXTS, moments).edit(split_at(lm, layers), tokenizer, None, PAIRS, MAX_LEN)
    assert len(memit_module._STARTS[lm]) == 1  # one start for both lambdas
    for lam in (0.5, 2.0):
        expected = memit_by_the_book(lm, tokenizer, layers, lam, moments, PAIRS, value)
        assert sorted(weights[lam]) == sorted(expected)
        for layer in layers:
            name = weight_name(lm, layer)
            update = (as_matrix(lm, layer) - in_weight_layout(lm, layer, expected[name])).abs().max()
            assert update > 1e-3  # far above the tolerance: a wrong residual or stale keys would show
            # Llama's eager attention takes its softmax in float32: the editor's padded batch differs there
            torch.testing.assert_close(weights[lam][name], expected[name], rtol=1e-5, atol=1e-6)
    fresh = lm.__class__(lm.config).double().requires_grad_(False)
    fresh.load_state_dict(lm.state_dict())  # the same weights, nothing cached for it
    assert fresh not in memit_module._STARTS and fresh not in rome_module._DELTAS
    again, _ = Memit("memit", layers, value, 2.0, CONTEXTS, moments).edit(split_at(fresh, layers), tokenizer, None, PAIRS, MAX_LEN)
    for name in again:
        assert torch.equal(again[name], weights[2.0][name]), name


def test_params_list_exactly_the_editors_the_registry_builds():
    """`editors.names` is validated against params.EDITORS (params cannot import torch code): it must name what
    `editors.BUILDERS` builds, and the gradient editors among them."""
    from editable_lm.editors import BUILDERS, gradient
    from editable_lm.params import EDITORS

    assert tuple(BUILDERS) == EDITORS and set(gradient.NAMES) < set(EDITORS)


def test_registry_builds_editors_from_params():
    from editable_lm.editors import Resources, build, edited_blocks, setting_name, settings, stats_layers
    from editable_lm.params import parse_params

    params = parse_params({"rome": {"layers": [1, 5], "steps": [4, 8]}, "memit": {"n_layers": [2, 3], "lambdas": [10.0, 100.0]}})
    assert edited_blocks({"layer": 5, "n_layers": 3}) == (3, 4, 5) and edited_blocks({"layer": 1, "n_layers": 3}) == (0, 1)
    assert edited_blocks({"layer": 5}) == (5,)  # ROME's
    assert stats_layers(params) == [0, 1, 3, 4, 5]  # the deepest MEMIT below each candidate layer
    assert settings("rome", params) == [{"layer": 1, "steps": 4}, {"layer": 1, "steps": 8}, {"layer": 5, "steps": 4},
                                        {"layer": 5, "steps": 8}]
    assert [setting_name(s) for s in settings("memit", params, {"layer": 5, "steps": 8})] == [
        "layer=5,steps=8,n_layers=2,lambda=10", "layer=5,steps=8,n_layers=2,lambda=100", "layer=5,steps=8,n_layers=3,lambda=10",
        "layer=5,steps=8,n_layers=3,lambda=100"]
    assert settings("memit", params)[0] == {"layer": 1, "steps": 4, "n_layers": 2, "lambda": 10.0}  # at ROME's first
    moments = {layer: torch.eye(2) for layer in range(6)}
    memit = build("memit", params, {"layer": 5, "steps": 8, "n_layers": 3, "lambda": 100.0}, Resources(moments=moments, contexts=("a",)))
    assert memit.layers == (3, 4, 5) and memit.batched and memit.lam == 100.0 and set(memit.moments) == {3, 4, 5}
    assert memit.value.steps == 8
    rome = build("rome", params, {"layer": 1, "steps": 4}, Resources(moments=moments))
    assert rome.layer == 1 and not rome.batched and rome.value.steps == 4
    with pytest.raises(EditLMError, match="unknown editor 'grace'"):
        build("grace", params, {"layer": 1}, Resources(moments=moments))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_editor_goes_through_the_same_metric_code(family, tokenizer):
    """ROME one edit at a time through `evaluate_edits`, MEMIT in one batch through `batched_grid`: the rows of
    the gradient editors, from the same functions."""
    from editable_lm.editors.gradient import FineTune
    from editable_lm.evaluation import EDIT_METRICS, batched_grid, evaluate_edits, reference

    lm = tiny(family, tokenizer)
    moments = {layer: moment_of(lm, tokenizer, layer) for layer in (1, 2)}
    passages = TEXTS[:2]
    rome = Rome("rome", 2, VALUE, CONTEXTS, moments[2])
    split = split_at(lm, [2])
    ref = reference(split, tokenizer, passages, MAX_LEN)
    pairs = [{**pair, "article_id": pair["id"], "probes": []} for pair in PAIRS]
    rows = evaluate_edits(split, tokenizer, pairs, [rome, FineTune("ft", 0.1, 1)], ref, MAX_LEN, n_leak_probes=1)
    assert [(r["edit_id"], r["procedure"]) for r in rows] == [(i, p) for i in range(3) for p in ("rome", "ft")]
    assert all(set(EDIT_METRICS) <= set(r) for r in rows)
    assert all(r["edit_steps"] is None for r in rows if r["procedure"] == "rome")
    assert sum(r["logp_new_post"] > r["logp_new_pre"] for r in rows if r["procedure"] == "rome") == 3
    memit = Memit("memit", (1, 2), VALUE, 1e-3, CONTEXTS, moments)
    split = split_at(lm, [1, 2])
    batch = batched_grid(split, tokenizer, pairs, [memit], reference(split, tokenizer, passages, MAX_LEN), MAX_LEN, 3)
    assert len(batch["memit"]) == 1 and {"edit_success", "ppl_drawdown", "kl", "seconds"} <= set(batch["memit"][0])
