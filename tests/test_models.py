"""Naming the editable weights, and saving/loading checkpoints."""

from __future__ import annotations

import pytest
import torch

from conftest import random_batch, tiny_gpt2, tiny_llama
from editable_lm.errors import EditLMError
from editable_lm.models import edit_parameter_names, load_checkpoint, save_checkpoint, top_block_parameter_names
from editable_lm.params import EditParams


def logits(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_gpt2_edit_names(gpt2):
    """GPT-2: the two MLP matrices (no biases) of the top blocks."""
    names = edit_parameter_names(gpt2, EditParams(blocks=2, module="mlp"))
    assert names == [f"transformer.h.{i}.mlp.{m}.weight" for i in (1, 2) for m in ("c_fc", "c_proj")]


def test_llama_edit_names(llama):
    """Llama: gate/up/down projections of the top block."""
    names = edit_parameter_names(llama, EditParams(blocks=1, module="mlp"))
    assert sorted(names) == [f"model.layers.1.mlp.{m}.weight" for m in ("down_proj", "gate_proj", "up_proj")]


def test_all_blocks_of_deeper_model():
    """Block indices go past 9 without matching block 1 for block 10 etc."""
    model = tiny_gpt2(layers=12)
    names = edit_parameter_names(model, EditParams(blocks=3))
    assert {n.split(".")[2] for n in names} == {"9", "10", "11"}
    assert len(names) == 6


def test_too_many_blocks(gpt2):
    """Asking for more blocks than the model has is an error."""
    with pytest.raises(EditLMError, match="4 blocks requested, the model has 3"):
        edit_parameter_names(gpt2, EditParams(blocks=4))


def test_unknown_module(llama):
    """A submodule name that matches nothing is an error naming it."""
    with pytest.raises(EditLMError, match="feedforward"):
        edit_parameter_names(llama, EditParams(blocks=1, module="feedforward"))


def test_zero_blocks_is_every_parameter(llama):
    """n_blocks=0 selects every parameter of the model."""
    assert top_block_parameter_names(llama, 0) == [n for n, _ in llama.named_parameters()]


def test_blocks_without_module_include_norms_and_biases(gpt2):
    """Without a module, every parameter of the top blocks is selected, biases and norms too."""
    names = top_block_parameter_names(gpt2, 1)
    assert names == [n for n, _ in gpt2.named_parameters() if n.startswith("transformer.h.2.")]
    assert "transformer.h.2.ln_1.bias" in names


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
def test_checkpoint_round_trip(tmp_path, tokenizer, build):
    """save + load gives the same logits, eager attention, and safetensors only (no pickles)."""
    model = build()
    path = tmp_path / "ckpt"
    save_checkpoint(model, tokenizer, path)
    loaded, loaded_tok = load_checkpoint(path)
    batch = random_batch(seed=0)
    with torch.no_grad():
        torch.testing.assert_close(logits(loaded, batch), logits(model, batch), rtol=0, atol=0)
    assert loaded.config._attn_implementation == "eager"
    files = {p.name for p in path.iterdir()}
    assert "model.safetensors" in files and "config.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert loaded_tok("Albert Einstein")["input_ids"] == tokenizer("Albert Einstein")["input_ids"]
    assert loaded_tok.pad_token is not None
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary leftovers


def test_save_replaces_existing_checkpoint(tmp_path, tokenizer):
    """Saving over a checkpoint replaces it entirely (stale files go)."""
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "stale.bin").write_bytes(b"old")
    save_checkpoint(tiny_llama(), tokenizer, path)
    assert not (path / "stale.bin").exists()
    assert (path / "model.safetensors").is_file()


def test_load_empty_dir(tmp_path):
    """A directory without a checkpoint is an EditLMError, not a transformers traceback."""
    with pytest.raises(EditLMError, match="not a model checkpoint"):
        load_checkpoint(tmp_path)
