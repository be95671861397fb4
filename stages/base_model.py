"""Fetch the base model and save it as a safetensors checkpoint with its tokenizer."""

from editable_lm.cli import run_stage, stage_args
from editable_lm.models import build_base_model, save_checkpoint


def main() -> None:
    params, args = stage_args(__doc__, "--out")
    model, tokenizer = build_base_model(params.model.name)
    save_checkpoint(model, tokenizer, args.out)
    print(f"{params.model.name}: {model.num_parameters() / 1e6:.1f}M parameters -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
