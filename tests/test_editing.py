"""The edit: encoding, the inner loop, losses, and the MAML meta-gradient."""

from __future__ import annotations

import math

import higher
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from conftest import random_batch, tiny_llama
from editable_lm.editing import (
    IGNORE, apply_edit, collate, detached_edit_params, encode_edit, kl_divergence, lm_loss, target_loss,
)
from editable_lm.evaluation import Reference
from editable_lm.models import edit_parameter_names
from editable_lm.params import EditableParams, EditParams, TrainParams
from editable_lm.split_forward import Prepared, SplitForward, Targets
from editable_lm.training import editable_losses, lr_factor, schedule_lr

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


# Two real positions and a padded one: p = pre-edit, q = post-edit next-token distributions over 3 tokens.
P = [[0.9, 0.05, 0.05], [0.25, 0.25, 0.5], [0.6, 0.3, 0.1]]
Q = [[0.2, 0.3, 0.5], [0.25, 0.25, 0.5], [0.1, 0.1, 0.8]]
MASK = [[1, 1, 0]]


def hand_kl(a, b) -> float:
    """Mean over the real positions of sum_v a_v log(a_v / b_v), with Python floats."""
    per = [sum(x * math.log(x / y) for x, y in zip(a_t, b_t)) for a_t, b_t, m in zip(a, b, MASK[0]) if m]
    return sum(per) / len(per)


def test_kl_divergence_is_pre_given_post():
    """kl_divergence(pre, post) is KL(pre || post), not KL(post || pre): the two differ by 0.12 nats here.
    Logits are log-probabilities shifted per position (softmax removes the shift)."""
    shift = torch.tensor([[[3.0], [-1.0], [0.5]]], dtype=torch.float64)
    pre, post = torch.tensor([P], dtype=torch.float64).log() + shift, torch.tensor([Q], dtype=torch.float64).log() - shift
    forward, backward = hand_kl(P, Q), hand_kl(Q, P)
    assert abs(forward - backward) > 0.1  # the case tells the two directions apart
    got = kl_divergence(pre, post, torch.tensor(MASK)).item()
    assert got == pytest.approx(forward, rel=1e-12)
    assert got != pytest.approx(backward, rel=1e-3)


def test_reference_kl_is_unedited_given_edited():
    """Reference.kl sums, and mean_kl averages, KL(unedited || edited) over the real tokens."""
    labels = torch.tensor([[IGNORE, 1, 2]])
    batch = {"input_ids": torch.tensor([[0, 1, 2]]), "attention_mask": torch.tensor(MASK), "labels": labels}
    ref = Reference.of(Prepared(batch, Targets.of(labels)), torch.tensor([P], dtype=torch.float64).log())
    edited = torch.tensor([Q], dtype=torch.float64).log()
    forward, backward = hand_kl(P, Q), hand_kl(Q, P)
    assert ref.kl(edited).item() == pytest.approx(2 * forward, rel=1e-12)  # 2 real tokens
    assert ref.mean_kl(edited).item() == pytest.approx(forward, rel=1e-12)
    assert ref.mean_kl(edited).item() != pytest.approx(backward, rel=1e-3)
    assert ref.kl(edited, slice(0, 1)).item() == pytest.approx(2 * forward, rel=1e-12)


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


def hf_logits(model, params, batch):
    """Logits [B, T, V] of the Hugging Face model itself, with `params` swapped in."""
    kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    return functional_call(model, dict(params), args=(), kwargs=kwargs).logits


def shifted_ce(logits, labels):
    """Mean cross-entropy of each labelled token given the positions before it, in plain torch."""
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = labels[:, 1:]
    labelled = targets != IGNORE
    nll = -logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (nll * labelled).sum() / labelled.sum()


def kl_pre_post(pre_logits, post_logits, attention_mask):
    """KL(pre || post) per position with `F.kl_div`, averaged over the real (unpadded) tokens."""
    per = F.kl_div(torch.log_softmax(post_logits, -1), torch.log_softmax(pre_logits, -1), log_target=True, reduction="none")
    mask = attention_mask.to(per.dtype)
    return (per.sum(-1) * mask).sum() / mask.sum()


def hand_inner_loop(gpt2, names, edits, inner_lr, steps):
    """Second-order SGD on the edit loss of the HF model itself, at a rate per tensor: the edited weights."""
    edited = {n: gpt2.get_parameter(n) for n in names}
    for _ in range(steps):
        loss = shifted_ce(hf_logits(gpt2, edited, edits), edits["labels"])
        step = torch.autograd.grad(loss, list(edited.values()), create_graph=True)
        edited = {n: value - inner_lr[n] * g for (n, value), g in zip(edited.items(), step)}
    return edited


def test_editable_losses_match_an_independent_computation(gpt2):
    """base, edit, locality and total (distinct coefficients) equal the same losses computed on the HF model
    directly (hand-written inner loop with per-tensor rates, second order), and so do their gradients
    (the pre-edit distribution held fixed in the KL)."""
    gpt2 = gpt2.double()
    names = edit_parameter_names(gpt2, EDIT)
    model = SplitForward(gpt2, names)
    passages = collate([(ids, ids) for ids in ([1, 2, 3, 4, 5, 6], [7, 8, 9])], pad_id=0)  # second row padded
    edits = random_batch(seed=1, n_labelled=3)
    params = EditableParams(inner_steps=2, cbase=0.5, cedit=2.0, cloc=3.0)
    inner_lr = {n: torch.tensor(0.2 + 0.15 * i, dtype=torch.float64) for i, n in enumerate(names)}
    losses = editable_losses(model, passages, edits, inner_lr, params)
    weights = list(gpt2.parameters())
    grads = torch.autograd.grad(losses["total"], weights)

    edited = hand_inner_loop(gpt2, names, edits, inner_lr, params.inner_steps)
    pre = gpt2(input_ids=passages["input_ids"], attention_mask=passages["attention_mask"]).logits
    base = shifted_ce(pre, passages["labels"])
    edit = shifted_ce(hf_logits(gpt2, edited, edits), edits["labels"])
    locality = kl_pre_post(pre.detach(), hf_logits(gpt2, edited, passages), passages["attention_mask"])
    total = 0.5 * base + 2.0 * edit + 3.0 * locality

    assert locality.item() > 1e-4  # the edit moved the passages' predictions
    for key, expected in {"base": base, "edit": edit, "locality": locality, "total": total}.items():
        assert losses[key].item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-12), key
    for (name, _), ours, theirs in zip(gpt2.named_parameters(), grads, torch.autograd.grad(total, weights)):
        torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-10, msg=lambda m: f"{name}: {m}")


def test_editable_losses_extra_terms_match_an_independent_computation(gpt2):
    """The levers (issue 20): locality against another model's predictions, generality on a probe and
    neighbourhood at another person's name equal the same terms computed on the HF model directly, and so do the
    total's gradients; each term moves the total by its own weight."""
    gpt2 = gpt2.double()
    names = edit_parameter_names(gpt2, EDIT)
    model = SplitForward(gpt2, names)
    passages = collate([(ids, ids) for ids in ([1, 2, 3, 4, 5, 6], [7, 8, 9])], pad_id=0)
    edits, probes = random_batch(seed=1, n_labelled=3), random_batch(seed=3, n_labelled=2)
    neighbours = random_batch(seed=4, n_labelled=2)
    reference = torch.randn(2, 6, gpt2.config.vocab_size, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    params = EditableParams(inner_steps=2, cbase=0.5, cedit=2.0, cloc=3.0, cgen=0.7, cneigh=4.0)
    losses = editable_losses(model, passages, edits, 0.3, params, reference, probes, neighbours)
    weights = list(gpt2.parameters())
    grads = torch.autograd.grad(losses["total"], weights)

    edited = hand_inner_loop(gpt2, names, edits, {n: 0.3 for n in names}, params.inner_steps)
    pre = gpt2(input_ids=passages["input_ids"], attention_mask=passages["attention_mask"]).logits
    base = shifted_ce(pre, passages["labels"])
    edit = shifted_ce(hf_logits(gpt2, edited, edits), edits["labels"])
    locality = kl_pre_post(reference, hf_logits(gpt2, edited, passages), passages["attention_mask"])
    generality = shifted_ce(hf_logits(gpt2, edited, probes), probes["labels"])
    named = neighbours["labels"][:, 1:] != IGNORE  # the positions predicting the neighbour's name
    before = gpt2(input_ids=neighbours["input_ids"], attention_mask=neighbours["attention_mask"]).logits[:, :-1][named]
    after = hf_logits(gpt2, edited, neighbours)[:, :-1][named]
    neighbourhood = kl_pre_post(before.detach()[None], after[None], torch.ones(1, len(before)))
    total = 0.5 * base + 2.0 * edit + 3.0 * locality + 0.7 * generality + 4.0 * neighbourhood

    assert min(generality.item(), neighbourhood.item()) > 1e-6  # both terms are really there
    expected = {"base": base, "edit": edit, "locality": locality, "generality": generality,
                "neighbourhood": neighbourhood, "total": total}
    assert set(losses) == set(expected)
    for key, value in expected.items():
        assert losses[key].item() == pytest.approx(value.item(), rel=1e-9, abs=1e-12), key
    for (name, _), ours, theirs in zip(gpt2.named_parameters(), grads, torch.autograd.grad(total, weights)):
        torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-10, msg=lambda m: f"{name}: {m}")
    plain = editable_losses(model, passages, edits, 0.3, params)  # the levers off: ENN's three terms
    assert set(plain) == {"total", "base", "edit", "locality"}
    assert plain["locality"].item() != pytest.approx(locality.item(), rel=1e-3)  # its own pre-edit reference


def test_editable_losses_zero_lr_has_zero_locality(gpt2):
    """With inner lr 0 the edit moves nothing: KL 0, and the edit loss is the unedited model's."""
    model = SplitForward(gpt2, edit_parameter_names(gpt2, EDIT))
    passages = collate([(ids, ids) for ids in ([1, 2, 3, 4, 5, 6], [7, 8, 9])], pad_id=0)
    edits = random_batch(seed=1, n_labelled=3)
    losses = editable_losses(model, passages, edits, 0.0, EditableParams(cbase=0.5, cedit=2.0, cloc=3.0))
    assert losses["locality"].item() == pytest.approx(0.0, abs=1e-7)
    full = gpt2(input_ids=edits["input_ids"], attention_mask=edits["attention_mask"]).logits
    assert losses["edit"].item() == pytest.approx(shifted_ce(full, edits["labels"]).item(), rel=1e-6)


BATCH_EDITS = [  # names of 2, 3 and 7 SmolLM2 tokens, prefixes of different lengths
    ("Quantum jumps were explained by", "Bohr"),
    ("Radioactivity was studied in Paris by", "Marie Curie"),
    ("The mock theta functions were found by", "Srinivasa Ramanujan"),
]


@pytest.fixture
def edit_batch(tokenizer):
    """A tiny float64 Llama over SmolLM2's vocabulary, split below its top block, and three encoded edits."""
    lm = tiny_llama(vocab=len(tokenizer)).double().requires_grad_(False)
    model = SplitForward(lm, edit_parameter_names(lm, EditParams(blocks=1)))
    examples = [encode_edit(tokenizer, prefix, name, max_len=32) for prefix, name in BATCH_EDITS]
    return model, examples


def alone(model, example, params=None):
    """One edit, unpadded, through the HF model: its name tokens' cross-entropies [n]."""
    ids, labels = example
    logits = hf_logits(model.model, params or {}, {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids))})
    n = sum(label != IGNORE for label in labels)
    return F.cross_entropy(logits[0, -n - 1 : -1], torch.tensor(labels[-n:]), reduction="none")


def test_target_loss_per_edit_sums_each_edits_mean(edit_batch, tokenizer):
    """per_edit=True: the sum over the padded batch's edits of each edit's mean token cross-entropy, each
    computed alone; per_edit=False: the mean over all the batch's name tokens."""
    model, examples = edit_batch
    assert len({sum(label != IGNORE for label in labels) for _, labels in examples}) == 3
    batch = model.prepare(collate(examples, tokenizer.pad_token_id))
    logits = model.target_logits(batch)
    per_token = [alone(model, example) for example in examples]
    per_edit = sum(losses.mean() for losses in per_token)
    pooled = torch.cat(per_token).mean()
    assert abs(per_edit.item() - 3 * pooled.item()) > 1e-3  # the two reductions differ here
    assert target_loss(logits, batch.targets, per_edit=True).item() == pytest.approx(per_edit.item(), rel=1e-10)
    assert target_loss(logits, batch.targets).item() == pytest.approx(pooled.item(), rel=1e-10)
    for example, losses in zip(examples, per_token):  # a batch of one: both reductions are that edit's mean
        single = model.prepare(collate([example], tokenizer.pad_token_id))
        for flag in (True, False):
            got = target_loss(model.target_logits(single), single.targets, per_edit=flag)
            assert got.item() == pytest.approx(losses.mean().item(), rel=1e-10)


def test_per_edit_sgd_step_is_the_sum_of_each_edits_gradient(edit_batch, tokenizer):
    """One apply_edit step with per_edit=True moves each weight by -lr times the sum over the edits of the
    gradient of that edit's mean loss, each edit alone through the HF model."""
    model, examples = edit_batch
    batch = model.prepare(collate(examples, tokenizer.pad_token_id))
    start = detached_edit_params(model)
    lr = 0.7
    stepped = apply_edit(model, start, batch, lr, steps=1, per_edit=True)
    pooled = apply_edit(model, start, batch, lr, steps=1)
    total = {n: torch.zeros_like(v) for n, v in start.items()}
    for example in examples:
        grads = torch.autograd.grad(alone(model, example, start).mean(), list(start.values()))
        total = {n: total[n] + g for n, g in zip(start, grads)}
    for name in start:
        step = lr * total[name]
        expected = start[name] - step
        # Llama's rotary angles are computed in float32 even in a float64 model (transformers casts to float);
        # the batched and the single runs agree to 1e-16 here but only to 4e-8 of the step on CI's CPU: so
        # agreement to 1e-6 of the step, where the pooled mean misses by most of a step.
        tolerance = 1e-6 * step.abs().max().item()
        torch.testing.assert_close(stepped[name], expected, rtol=0, atol=tolerance, msg=lambda m: f"{name}: {m}")
        assert (pooled[name] - expected).abs().max() > 1e4 * tolerance  # the pooled mean steps differently


def test_lr_schedule_warms_up_then_decays_on_a_cosine():
    """Linear warm-up to the full rate, then 0.5 (1 + cos(pi p)) over the remaining steps; the default leaves the
    optimizer's rates untouched."""
    train = TrainParams(steps=12, warmup_steps=4, decay="cosine")
    factors = [lr_factor(step, train) for step in range(1, 13)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and all(a > b > 0 for a, b in zip(factors[4:], factors[5:]))
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert [lr_factor(step, TrainParams(steps=12, warmup_steps=4)) for step in (4, 5, 12)] == [1.0, 1.0, 1.0]

    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([{"params": [weight], "lr": 0.2}, {"params": [], "lr": 0.1}])
    schedule_lr(optimizer, [0.2, 0.1], 2, train)
    assert [g["lr"] for g in optimizer.param_groups] == [0.2 * 0.5, 0.1 * 0.5]
    optimizer.param_groups[0]["lr"] = 0.3
    schedule_lr(optimizer, [0.2, 0.1], 2, TrainParams(steps=12))  # no warm-up, no decay: untouched
    assert optimizer.param_groups[0]["lr"] == 0.3
