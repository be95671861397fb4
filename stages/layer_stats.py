"""Second moments C = E[k k^T] of the MLP output projections' inputs in the base model, for ROME and MEMIT: every
block they may edit (`rome.layers` and MEMIT's blocks below each), over `editors.n_stats_tokens` tokens of the
train passages, in one safetensors file. Reruns only when the base model, the layers or the token count change."""

from pathlib import Path

from editable_lm.cli import run_stage, stage_args
from editable_lm.editors import stats_layers
from editable_lm.layer_stats import save_moments, second_moments
from editable_lm.models import load_for_editing
from editable_lm.storage import atomic_path, read_jsonl


def main() -> None:
    params, args = stage_args(__doc__, "--base", "--split", "--out")
    model, tokenizer, _ = load_for_editing(args.base, params.edit)
    passages = read_jsonl(Path(args.split, "passages_train.jsonl"))
    layers = stats_layers(params)
    moments, n_tokens = second_moments(model, tokenizer, passages, layers, params.editors.n_stats_tokens, params.evaluate.seq_len)
    with atomic_path(args.out) as tmp:
        save_moments(tmp, moments, n_tokens)
    print(f"layers {layers}: C over {n_tokens} tokens")


if __name__ == "__main__":
    run_stage(main)
