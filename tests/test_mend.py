"""MEND's oracles on tiny GPT-2 and Llama models in float64: the factors are the gradient, the editor at its
initialisation is one SGD step, batched edits sum their per-edit updates, and a short training lowers the
post-update edit loss."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import VOCAB, tiny_gpt2, tiny_llama, training_data
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


def tokenizer_sized(family: str, tokenizer):
    """A tiny model of `family` (float32) whose vocabulary is the real tokenizer's."""
    return tiny_gpt2(len(tokenizer)) if family == "gpt2" else tiny_llama(len(tokenizer), initializer_range=0.2)


@pytest.mark.parametrize("family", FAMILIES)
def test_train_mend_lowers_the_post_update_loss_and_leaves_the_model(family, tokenizer):
    """`train_mend` on the editable model's data streams: the post-update edit loss of the training edits falls
    below the untrained editor's (one SGD step), and the model's own weights are untouched."""
    from editable_lm.editing import encode_edit
    from editable_lm.mend import train_mend
    from editable_lm.params import MendParams, TrainParams

    model = tokenizer_sized(family, tokenizer)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    passages, pairs = training_data()
    edit = EditParams(blocks=2, module="mlp")
    train = TrainParams(steps=40, batch_size=2, seq_len=16, outer_blocks=2, checkpoint_every=0)
    cfg = MendParams(edit_lr=1e-3, lr=1e-2, lr_lr=1e-2, cloc=0.1)

    def post_loss(mend) -> float:
        split = SplitForward(model, edit_parameter_names(model, edit))
        total = 0.0
        for pair in pairs:
            batch = split.prepare(collate([encode_edit(tokenizer, pair["prefix"], pair["new_name"], 16)], 0))
            with torch.no_grad():
                total += target_loss(split.target_logits(batch, mend.update(split, batch)), batch.targets).item()
        return total

    untrained = Mend(SplitForward(model, edit_parameter_names(model, edit)), cfg.edit_lr).eval()  # one SGD step
    trained = train_mend(model, tokenizer, passages, pairs, train, cfg, edit)
    assert post_loss(trained) < 0.9 * post_loss(untrained)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert float(trained.transforms[trained.key[trained.names[0]]].count) > 0  # the statistics saw the factors


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_editor_reloads_to_the_same_updates(family, tmp_path):
    """save_mend / load_mend: the same updates bit for bit; a file for another model's weights is a clear error."""
    from editable_lm.errors import EditLMError
    from editable_lm.mend import load_mend, save_mend

    split = split_model(family)
    mend = Mend(split, edit_lr=0.1, rank=4).double()
    edit = prepared(split, edits(5, 2))
    mend.train()
    mend.update(split, edit)  # statistics
    with torch.no_grad():
        for transform in mend.transforms.values():
            transform.layers[0].up.normal_()
    mend.eval()
    save_mend(mend, tmp_path / "editor.safetensors")
    loaded = load_mend(split, tmp_path / "editor.safetensors")
    assert loaded.rank == 4 and loaded.names == mend.names
    new, again = mend.update(split, edit), loaded.update(split, edit)
    assert all(torch.equal(new[name], again[name]) for name in mend.names)
    other = SplitForward(split.model, edit_parameter_names(split.model, EditParams(blocks=1, module="mlp")))
    with pytest.raises(EditLMError, match="trained for weights"):
        load_mend(other, tmp_path / "editor.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(EditLMError, match="not a MEND editor file"):
        load_mend(split, tmp_path / "bad.safetensors")


SAVE_IN_A_PROCESS = """
import sys
from conftest import tiny_gpt2
from editable_lm.mend import Mend, save_mend
from editable_lm.models import edit_parameter_names
from editable_lm.params import EditParams
from editable_lm.split_forward import SplitForward
model = tiny_gpt2()
save_mend(Mend(SplitForward(model, edit_parameter_names(model, EditParams(blocks=2, module="mlp"))), 0.1, 4), sys.argv[1])
"""


def test_an_editor_file_has_the_same_bytes_from_every_process(tmp_path):
    """The same editor saved by 4 fresh processes: the same bytes, so DVC sees the same output (safetensors writes a
    metadata map in hash order, which is seeded per process), and the file still loads."""
    from editable_lm.errors import EditLMError
    from editable_lm.mend import load_mend

    for i in range(4):
        subprocess.run([sys.executable, "-c", SAVE_IN_A_PROCESS, str(tmp_path / f"{i}.safetensors")], check=True,
                       cwd=Path(__file__).parent)
    files = {(tmp_path / f"{i}.safetensors").read_bytes() for i in range(4)}
    assert len(files) == 1
    model = tiny_gpt2()
    load_mend(SplitForward(model, edit_parameter_names(model, EditParams(blocks=2, module="mlp"))), tmp_path / "0.safetensors")
    from safetensors.torch import load_file, save_file

    save_file(load_file(tmp_path / "0.safetensors"), tmp_path / "bare.safetensors")  # no build in its metadata
    with pytest.raises(EditLMError, match="no MEND build in its metadata"):
        load_mend(SplitForward(model, edit_parameter_names(model, EditParams(blocks=2, module="mlp"))),
                  tmp_path / "bare.safetensors")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("passes", (1, 3))
def test_mend_editor_goes_through_the_same_metric_code(family, tokenizer, tmp_path, passes):
    """The registry builds `mend` from a saved editor; `evaluate_edits` measures it beside FT with the same rows,
    and the untrained editor (one SGD step at edit_lr a pass: `mend.edit_passes`) ends on FT's weights after as
    many steps."""
    from editable_lm.editors import Resources, build
    from editable_lm.editors.gradient import FineTune
    from editable_lm.evaluation import EDIT_METRICS, evaluate_edits, reference
    from editable_lm.mend import save_mend
    from editable_lm.params import parse_params

    model = tokenizer_sized(family, tokenizer)
    split = SplitForward(model, edit_parameter_names(model, EditParams(blocks=2, module="mlp")))
    save_mend(Mend(split, edit_lr=0.5).eval(), tmp_path / "editor.safetensors")
    params = parse_params({"mend": {"edit_passes": passes}})
    editor = build("mend", params, {}, Resources(split=split, mend=str(tmp_path / "editor.safetensors")))
    assert editor.weight_names(model) == matrix_names(split) and not editor.batched
    passages, pairs = training_data(3)
    ref = reference(split, tokenizer, passages[:2], 16)
    rows = evaluate_edits(split, tokenizer, pairs, [editor, FineTune("ft", 0.5, passes)], ref, 16, n_leak_probes=1)
    assert [(r["edit_id"], r["procedure"]) for r in rows] == [(i, p) for i in range(3) for p in ("mend", "ft")]
    assert all(set(EDIT_METRICS) - {"generality"} <= set(r) for r in rows)
    for mend_row, ft_row in zip(rows[::2], rows[1::2]):
        assert mend_row["edit_steps"] is None
        assert mend_row["logp_new_post"] == pytest.approx(ft_row["logp_new_post"], rel=1e-4)
