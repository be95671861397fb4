"""The edit: encoding, the inner loop, losses, and the MAML meta-gradient."""

from __future__ import annotations

import higher
import pytest
import torch

from conftest import random_batch
from editable_lm.editing import (
    IGNORE, apply_edit, collate, detached_edit_params, encode_edit, kl_divergence, lm_loss, target_loss,
)
from editable_lm.models import edit_parameter_names
from editable_lm.params import EditableParams, EditParams
from editable_lm.split_forward import SplitForward
from editable_lm.training import editable_losses

PREFIX = "The theory of relativity was developed by"
EDIT = EditParams(blocks=2)


def test_encode_edit_labels_only_the_name(tokenizer):
    """Labels are IGNORE on the prefix and are the name's tokens, which decode to ' ' + name."""
    ids, labels = encode_edit(tokenizer, PREFIX, "Marie Curie", max_len=64)
    prefix_ids = tokenizer(PREFIX, add_special_tokens=False)["input_ids"]
    assert ids[: len(prefix_ids)] == prefix_ids
    assert labels[: len(prefix_ids)] == [IGNORE] * len(prefix_ids)
    assert labels[len(prefix_ids) :] == ids[len(prefix_ids) :]
    assert tokenizer.decode(ids[len(prefix_ids) :]) == " Marie Curie"


def test_encode_edit_cuts_prefix_from_the_left(tokenizer):
    """With a short max_len the prefix loses its start; the name stays whole."""
    full, _ = encode_edit(tokenizer, PREFIX, "Marie Curie", max_len=64)
    ids, labels = encode_edit(tokenizer, PREFIX, "Marie Curie", max_len=5)
    assert len(ids) == 5 and ids == full[-5:]
    n_name = sum(label != IGNORE for label in labels)
    assert tokenizer.decode(ids[-n_name:]) == " Marie Curie"
    # A name longer than max_len still keeps one prefix token to condition on.
    ids, labels = encode_edit(tokenizer, PREFIX, "Marie Curie", max_len=1)
    assert labels[0] == IGNORE and ids[1:] == full[-n_name:]


def test_collate_right_pads():
    """Rows are right-padded; padding is masked and unlabelled."""
    batch = collate([([5, 6, 7], [IGNORE, 6, 7]), ([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]


def test_zero_lr_edit_changes_nothing(gpt2):
    """An edit with lr 0 gives exactly the model's own logits."""
    model = SplitForward(gpt2, edit_parameter_names(gpt2, EDIT))
    batch = model.prepare(random_batch(seed=1, n_labelled=3))
    edited = apply_edit(model, detached_edit_params(model), batch, 0.0, steps=2)
    with torch.no_grad():
        torch.testing.assert_close(model.logits(batch, edited), model.logits(batch), rtol=0, atol=0)


def test_edit_step_lowers_edit_loss_and_leaves_model_alone(gpt2):
    """One small SGD step lowers the edit loss, changes only edit weights, and not in the model."""
    names = edit_parameter_names(gpt2, EDIT)
    model = SplitForward(gpt2, names)
    batch = model.prepare(random_batch(seed=1, n_labelled=3))
    before = {n: p.detach().clone() for n, p in gpt2.named_parameters()}
    start = {n: gpt2.get_parameter(n) for n in names}  # the live parameters themselves
    edited = apply_edit(model, start, batch, lr=0.1, steps=1)
    assert set(edited) == set(names)
    loss = lambda params: target_loss(model.target_logits(batch, params), batch.targets)  # noqa: E731
    assert loss(edited) < loss(None)
    assert all(not torch.equal(edited[n], before[n]) for n in names)
    for name, param in gpt2.named_parameters():
        assert torch.equal(param, before[name]), name
        assert param.grad is None


def test_kl_divergence():
    """KL of logits with themselves is 0, positive otherwise, and masked positions do not count."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert kl_divergence(logits, logits, mask).item() == pytest.approx(0.0, abs=1e-7)
    assert kl_divergence(logits, torch.randn(2, 5, 11), mask).item() > 0.1
    other = logits.clone()
    other[1, 3:] = torch.randn(2, 11)  # only padded positions differ
    assert kl_divergence(logits, other, mask).item() == pytest.approx(0.0, abs=1e-7)


def _ours(model, names, edit, other, lr, steps, create_graph, split=True):
    """Outer-loss gradient w.r.t. every model parameter, through our inner loop (split or full forward)."""
    forward = SplitForward(model, names, split)
    start = {n: model.get_parameter(n) for n in names}
    edited = apply_edit(forward, start, forward.prepare(edit), lr, steps, create_graph=create_graph)
    outer = lm_loss(forward.logits(forward.prepare(other), edited), other["labels"])
    return torch.autograd.grad(outer, list(model.parameters()), allow_unused=True)


def _higher(model, names, edit, other, lr, steps):
    """The same gradient through `higher`'s differentiable SGD, the reference MAML implementation."""
    opt = torch.optim.SGD([model.get_parameter(n) for n in names], lr=lr)
    with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
        for _ in range(steps):
            logits = fmodel(input_ids=edit["input_ids"], attention_mask=edit["attention_mask"]).logits
            diffopt.step(lm_loss(logits, edit["labels"]))
        logits = fmodel(input_ids=other["input_ids"], attention_mask=other["attention_mask"]).logits
        outer = lm_loss(logits, other["labels"])
        return torch.autograd.grad(outer, list(model.parameters()), allow_unused=True)


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("steps", [1, 2])
def test_meta_gradient_matches_higher(gpt2, steps, split):
    """Second-order MAML gradients equal `higher`'s for every parameter; first order differs on edit weights."""
    model = gpt2.double()
    names = edit_parameter_names(model, EDIT)
    edit, other = random_batch(seed=1, n_labelled=3), random_batch(seed=2)
    ours = _ours(model, names, edit, other, lr=0.5, steps=steps, create_graph=True, split=split)
    ref = _higher(model, names, edit, other, lr=0.5, steps=steps)
    first = _ours(model, names, edit, other, lr=0.5, steps=steps, create_graph=False)
    for (name, _), g, r, f in zip(model.named_parameters(), ours, ref, first):
        assert g is not None and r is not None, name
        torch.testing.assert_close(g, r, rtol=0, atol=1e-8, msg=name)
        if name in names:
            assert (g - f).abs().max() > 1e-3, name  # the second-order term is really there


def test_editable_losses_total_and_zero_lr_locality(gpt2):
    """total = cbase*base + cedit*edit + cloc*locality; with inner lr 0 nothing moves (KL 0)."""
    model = SplitForward(gpt2, edit_parameter_names(gpt2, EDIT))
    passages = collate([(ids, ids) for ids in ([1, 2, 3, 4, 5, 6], [7, 8, 9])], pad_id=0)
    edits = random_batch(seed=1, n_labelled=3)
    params = EditableParams(cbase=0.5, cedit=2.0, cloc=3.0)
    losses = editable_losses(model, passages, edits, 0.0, params)
    assert losses["locality"].item() == pytest.approx(0.0, abs=1e-7)
    full = gpt2(input_ids=edits["input_ids"], attention_mask=edits["attention_mask"]).logits
    assert losses["edit"].item() == pytest.approx(lm_loss(full, edits["labels"]).item(), rel=1e-6)
    losses = editable_losses(model, passages, edits, 0.5, params)
    assert losses["locality"].item() > 1e-4
    expected = 0.5 * losses["base"] + 2.0 * losses["edit"] + 3.0 * losses["locality"]
    assert losses["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    losses["total"].backward()
    assert all(gpt2.get_parameter(n).grad is not None for n in model.names)
