"""MEND's oracles on tiny GPT-2 and Llama models in float64: the factors are the gradient, the editor at its
initialisation is one SGD step, batched edits sum their per-edit updates, and a short training lowers the
post-update edit loss."""

from __future__ import annotations

import pytest
import torch

from conftest import VOCAB, tiny_gpt2, tiny_llama
from editable_lm.editing import IGNORE, collate, edit_step, target_loss
from editable_lm.mend import Mend, factors, matrix_names
from editable_lm.models import edit_parameter_names
from editable_lm.params import EditParams
from editable_lm.split_forward import SplitForward

FAMILIES = ("gpt2", "llama")


def split_model(family: str) -> SplitForward:
    model = (tiny_gpt2() if family == "gpt2" else tiny_llama(initializer_range=0.2)).double().requires_grad_(False)
    return SplitForward(model, edit_parameter_names(model, EditParams(blocks=2, module="mlp")))


def edits(seed: int, n: int, length: int = 9, labelled: int = 3) -> list[tuple[list[int], list[int]]]:
    """`n` random sequences of different lengths whose last `labelled` tokens are the edit's target."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(1, VOCAB, (length - i % 2,), generator=g).tolist()
        rows.append((ids, [IGNORE] * (len(ids) - labelled) + ids[-labelled:]))
    return rows


def prepared(split: SplitForward, rows):
    return split.prepare(collate(rows, pad_id=0))


@pytest.mark.parametrize("family", FAMILIES)
def test_factors_reproduce_the_gradient(family):
    """sum_t delta_t u_t^T over the real tokens equals dL/dW from autograd, for every edited matrix."""
    split = split_model(family)
    edit = prepared(split, edits(0, 2))
    params = {name: split.model.get_parameter(name).detach().clone().requires_grad_(True) for name in matrix_names(split)}
    assert len(params) == (4 if family == "gpt2" else 6)  # 2 blocks: c_fc, c_proj / gate, up, down
    loss, parts = factors(split, edit, params)
    grads = torch.autograd.grad(target_loss(split.target_logits(edit, params), edit.targets), list(params.values()))
    assert loss.item() > 0
    for (name, grad) in zip(params, grads):
        u, delta = parts[name]
        assert u.shape[0] == int(edit.batch["attention_mask"].sum())  # real tokens only
        outer = delta.T @ u
        torch.testing.assert_close(outer.T if family == "gpt2" else outer, grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_editor_at_initialisation_is_one_sgd_step(family):
    """With the residual branches at zero, MEND's update is W - lr dL/dW, whatever the normaliser has seen."""
    split = split_model(family)
    mend = Mend(split, edit_lr=0.3).double()
    edit = prepared(split, edits(1, 3))
    lr = mend.lrs[0].item()  # 0.3 as a float32 parameter, widened
    sgd = edit_step(split, {n: split.model.get_parameter(n).detach().requires_grad_(True) for n in mend.names}, edit, lr,
                    create_graph=False)
    for trained in (False, True):  # training mode: the running statistics take this edit's factors first
        mend.train(trained)
        new = mend.update(split, edit)
        assert set(new) == set(mend.names)
        for name in mend.names:
            torch.testing.assert_close(new[name], sgd[name], rtol=1e-10, atol=1e-12)
    assert float(mend.transforms[mend.key[mend.names[0]]].count) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_edits_sum_their_updates(family):
    """A trained-looking editor (non-zero branches, fixed statistics) maps each token's factors alone, so the
    update of a batch of edits (each edit's loss summed) is the sum of the edits' own updates."""
    split = split_model(family)
    mend = Mend(split, edit_lr=0.1).double()
    rows = edits(2, 3)
    mend.train()
    mend.update(split, prepared(split, rows))  # statistics
    mend.eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for transform in mend.transforms.values():
            for layer in transform.layers:
                layer.up.copy_(0.3 * torch.randn(layer.up.shape, generator=g, dtype=layer.up.dtype))
    together = mend.update(split, prepared(split, rows), per_edit=True)
    alone = [mend.update(split, prepared(split, [row])) for row in rows]
    for name in mend.names:
        w = split.model.get_parameter(name)
        changed = together[name] - w
        assert changed.abs().max() > 0
        torch.testing.assert_close(changed, sum(a[name] - w for a in alone), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_short_training_lowers_the_post_update_edit_loss(family):
    """Adam on the editor's parameters (MLP and lrs) against the post-update edit loss: 30 steps over 4 edits."""
    split = split_model(family)
    mend = Mend(split, edit_lr=1e-3).double()
    batches = [prepared(split, [row]) for row in edits(4, 4)]

    def post_loss() -> float:
        mend.eval()
        with torch.no_grad():
            return sum(target_loss(split.target_logits(b, mend.update(split, b)), b.targets).item() for b in batches)

    before = post_loss()
    optimizer = torch.optim.Adam(mend.parameters(), lr=1e-2)
    for step in range(30):
        mend.train()
        batch = batches[step % len(batches)]
        loss = target_loss(split.target_logits(batch, mend.update(split, batch)), batch.targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = post_loss()
    assert after < 0.8 * before, (before, after)
