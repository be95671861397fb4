"""The split forward gives the full model's numbers: logits, edits, meta-gradients and evaluation rows."""

from __future__ import annotations

import pytest
import torch

from conftest import VOCAB, tiny_gpt2, tiny_llama
from editable_lm.editing import IGNORE, apply_edit, collate, detached_edit_params
from editable_lm.errors import EditLMError
from editable_lm.editors import Resources, build
from editable_lm.evaluation import evaluate_edits, reference
from editable_lm.models import edit_parameter_names, top_block_parameter_names
from editable_lm.params import EditableParams, EditParams, parse_params
from editable_lm.split_forward import SharedLower, SplitForward, Targets
from editable_lm.training import editable_losses

BUILDERS = {"gpt2": lambda: tiny_gpt2(layers=4), "llama": lambda: tiny_llama(layers=4)}


def padded_batch(seed: int, lengths=(9, 5, 7), n_labelled: int | None = None):
    """Right-padded random sequences of unequal lengths; the last `n_labelled` real tokens are labels."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for length in lengths:
        ids = torch.randint(1, VOCAB, (length,), generator=g).tolist()
        n = length if n_labelled is None else n_labelled
        examples.append((ids, [IGNORE] * (length - n) + ids[length - n :]))
    return collate(examples, pad_id=0)


def split_and_full(arch: str, blocks: int = 2, module: str = "mlp"):
    """The model in float64, split below its top `blocks` blocks (every weight of them if `module` is empty)."""
    model = BUILDERS[arch]().double()
    names = top_block_parameter_names(model, blocks, module)
    return model, SplitForward(model, names), SplitForward(model, names, split=False)


def shifted(params: dict, scale: float = 0.3) -> dict:
    """Edited-looking weights: the originals plus seeded noise."""
    g = torch.Generator().manual_seed(7)
    return {n: p.detach() + scale * torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}


@pytest.mark.parametrize("arch", BUILDERS)
@torch.no_grad()
def test_split_logits_equal_full_logits(arch):
    """Same logits from the cached lower blocks as from the whole model, with and without edited weights."""
    model, split, full = split_and_full(arch)
    assert split.start == 2  # 4 blocks, the top 2 edited: blocks 0-1 run once
    batch = padded_batch(seed=0)
    a, b = split.prepare(batch), full.prepare(batch)
    assert a.hidden is not None and b.hidden is None
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(split.logits(a)[real], full.logits(b)[real], rtol=0, atol=1e-10)
    edited = shifted(detached_edit_params(split))
    torch.testing.assert_close(split.logits(a, edited)[real], full.logits(b, edited)[real], rtol=0, atol=1e-10)
    assert not torch.allclose(split.logits(a, edited)[real], split.logits(a)[real])  # the weights do matter
    labelled = padded_batch(seed=0, n_labelled=2)
    a, b = split.prepare(labelled), full.prepare(labelled)
    assert split.target_logits(a).shape == (len(a.targets.tokens), VOCAB) == (3 * 2, VOCAB)
    torch.testing.assert_close(split.target_logits(a, edited), full.target_logits(b, edited), rtol=0, atol=1e-10)


@pytest.mark.parametrize("arch", BUILDERS)
@torch.no_grad()
def test_models_share_the_blocks_they_agree_on(arch):
    """Three checkpoints that differ from block 2 up (as training leaves them) share blocks 0-1: the first to
    prepare an input keeps block 2's input, the others start there, and every logit equals its full model's."""
    base = BUILDERS[arch]().double()
    trained = [base]
    for seed in (1, 2):
        model = BUILDERS[arch]().double()
        model.load_state_dict(base.state_dict())
        g = torch.Generator().manual_seed(seed)
        for name in top_block_parameter_names(model, 2):  # every weight of blocks 2 and 3
            value = model.get_parameter(name)
            value.add_(0.1 * torch.randn(value.shape, generator=g, dtype=value.dtype))
        trained.append(model)
    shared = SharedLower.of(trained)
    assert shared.depth == 2
    batch = padded_batch(seed=3)
    real = batch["attention_mask"].bool()
    for model in trained:
        names = top_block_parameter_names(model, 1, "mlp")  # edits in block 3: block 2 runs per model
        split, full = SplitForward(model, names, shared=shared), SplitForward(model, names, split=False)
        a, b = split.prepare(batch), full.prepare(batch)
        edited = shifted(detached_edit_params(split))
        torch.testing.assert_close(split.logits(a, edited)[real], full.logits(b, edited)[real], rtol=0, atol=1e-10)
    assert len(shared.outputs) == 1  # one lower pass for the three models
    other = BUILDERS[arch]().double()
    other.load_state_dict(base.state_dict())
    other.get_input_embeddings().weight.add_(1.0)
    assert SharedLower.of([base, other]).depth == 0  # different embeddings: nothing in common


@pytest.mark.parametrize("arch", BUILDERS)
def test_frozen_head_on_few_rows_is_the_lm_head_to_second_order(arch):
    """A frozen LM head on labelled rows takes its own kernels: same logits as the module, and first and
    second derivatives that gradcheck confirms (MAML's inner loop differentiates through them)."""
    model, split, _ = split_and_full(arch)
    head = model.get_output_embeddings().requires_grad_(False)
    rows = torch.randn(5, head.in_features, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(split._few_logits(rows), head(rows), rtol=0, atol=1e-12)
    assert split._few_logits(rows).grad_fn.name() == "_FrozenProductBackward"  # the fast path was taken
    assert torch.autograd.gradcheck(split._few_logits, (rows,))
    assert torch.autograd.gradgradcheck(split._few_logits, (rows,))
    head.requires_grad_(True)
    assert split._few_logits(rows).grad_fn.name() != "_FrozenProductBackward"  # a trained head keeps the module


@pytest.mark.parametrize("arch", BUILDERS)
@torch.no_grad()
def test_logits_of_several_inputs_at_once(arch):
    """One LM head application for several (inputs, weights, positions) gives each one's logits."""
    model, split, full = split_and_full(arch)
    passages, edits = padded_batch(seed=4), padded_batch(seed=5, lengths=(6, 8), n_labelled=2)
    edited = shifted(detached_edit_params(split))
    for forward in (split, full):
        a, b = forward.prepare(passages), forward.prepare(edits)
        requests = [(a, None, None), (a, edited, None), (b, edited, b.targets.where)]
        for together, (inputs, params, where) in zip(forward.logits_many(requests), requests):
            torch.testing.assert_close(together, forward.logits(inputs, params, where), rtol=0, atol=1e-10)


@pytest.mark.parametrize("arch", BUILDERS)
def test_inputs_prepared_together_share_one_embedding_lookup(arch):
    """`prepare_many` embeds all batches' tokens in one lookup (one dense embedding gradient when the
    embeddings train) and gives each batch what `prepare` gives it, values and embedding gradients alike."""
    model, split, _ = split_and_full(arch)
    passages, edits = padded_batch(seed=4), padded_batch(seed=5, lengths=(6, 8), n_labelled=2)
    lookups = []
    model.get_input_embeddings().register_forward_hook(lambda *_: lookups.append(1))
    embedding = model.get_input_embeddings().weight

    def embedding_grad(prepared):
        loss = sum(split.logits(inputs).square().mean() for inputs in prepared)
        return torch.autograd.grad(loss, embedding)[0]

    together = split.prepare_many([passages, edits])
    assert len(lookups) == 1
    alone = [split.prepare(passages), split.prepare(edits)]
    assert len(lookups) == 3
    for a, b in zip(together, alone):
        torch.testing.assert_close(a.hidden, b.hidden, rtol=0, atol=0)
    torch.testing.assert_close(embedding_grad(together), embedding_grad(alone), rtol=0, atol=1e-12)


def test_targets_are_the_labelled_next_tokens():
    """Position t is marked when label t+1 is set; tokens and rows follow row-major order."""
    labels = torch.tensor([[IGNORE, IGNORE, 5, 6], [IGNORE, 8, IGNORE, IGNORE]])
    targets = Targets.of(labels)
    assert targets.where.tolist() == [[False, True, True, False], [True, False, False, False]]
    assert targets.tokens.tolist() == [5, 6, 8] and targets.rows.tolist() == [0, 0, 1] and targets.n_rows == 2


@pytest.mark.parametrize("arch", BUILDERS)
def test_split_edit_gives_the_same_weights(arch):
    """Two SGD steps on a padded batch of edits end at the same weights on both paths."""
    model, split, full = split_and_full(arch, module="")
    batch = padded_batch(seed=1, n_labelled=3)
    ours = apply_edit(split, detached_edit_params(split), split.prepare(batch), lr=0.5, steps=2)
    theirs = apply_edit(full, detached_edit_params(full), full.prepare(batch), lr=0.5, steps=2)
    for name in split.names:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-10, msg=name)
        assert not torch.equal(ours[name], model.get_parameter(name)), name


@pytest.mark.parametrize("arch", BUILDERS)
@pytest.mark.parametrize("first_order", [False, True])
def test_split_meta_gradient_equals_full(arch, first_order):
    """The MAML outer gradient matches for every parameter, including trained blocks below the edit."""
    model, split, full = split_and_full(arch, blocks=1)
    trained = top_block_parameter_names(model, 3)  # blocks 1-3 train; only block 3 is edited
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trained)
    passages, edits = padded_batch(seed=2), padded_batch(seed=3, lengths=(6, 8), n_labelled=2)
    params = EditableParams(inner_steps=2, cloc=10.0, first_order=first_order)
    grads = []
    for forward in (split, full):
        losses = editable_losses(forward, passages, edits, 0.5, params)
        grads.append(torch.autograd.grad(losses["total"], [model.get_parameter(n) for n in trained]))
    for name, ours, theirs in zip(trained, *grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9, msg=lambda m: f'{name}: {m}')  # summation order differs
    assert any(g.abs().sum() > 0 for name, g in zip(trained, grads[0]) if ".1." in name)  # below the edit


def test_split_and_full_evaluation_rows_agree(tokenizer):
    """Every metric of an evaluated edit is the same on both paths (timings aside)."""
    model = tiny_llama(vocab=len(tokenizer), layers=3).requires_grad_(False)
    names = edit_parameter_names(model, EditParams(blocks=1))
    pairs = [
        {"id": 0, "article_id": 0, "prefix": "The Principia was written by", "name": "Isaac Newton",
         "new_name": "Marie Curie", "probes": [{"prefix": "Gravity was explained by", "name": "Newton", "new_name": "Curie"}]},
        {"id": 1, "article_id": 1, "prefix": "The lectures were given by", "name": "Richard Feynman",
         "new_name": "Paul Dirac", "probes": []},
    ]
    passages = [{"text": "Copenhagen is the capital of Denmark."}, {"text": "Bread is baked from flour, water and salt."}]
    rows = []
    for split in (True, False):
        forward = SplitForward(model, names, split)
        ref = reference(forward, tokenizer, passages, 32)
        params = parse_params({"evaluate": {"edit_steps": 2}, "ft_kl": {"kl_weight": 10.0}})
        procs = [build(name, params, None, Resources(forward, tokenizer, 32, 1.0, passages)) for name in ("ft", "ft_kl")]
        rows.append(evaluate_edits(forward, tokenizer, pairs, procs, ref, 32, n_leak_probes=1))
    assert [r["procedure"] for r in rows[0]] == ["ft", "ft_kl"] * 2
    for ours, theirs in zip(*rows):
        for key in ours:
            if key not in ("sec_per_edit", "procedure"):
                assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6) if ours[key] is not None else theirs[key] is None, key


def test_edit_weights_outside_the_blocks_are_refused(gpt2):
    with pytest.raises(EditLMError, match="inside the transformer blocks"):
        SplitForward(gpt2, ["transformer.wte.weight"])
