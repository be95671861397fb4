"""Apply one edit to a checkpoint and show what it changed.

    python -m editable_lm.edit --model models/editable \\
        "The theory of relativity was developed by Albert Einstein." --replace "Albert Einstein" --name "Marie Curie"

Prints greedy generations for a few prompts before and after the edit, the new name's
log-probability, and the locality figures (perplexity drawdown, KL, top-1 agreement) on
held-out passages.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from editable_lm.cli import run_stage
from editable_lm.errors import EditLMError
from editable_lm.evaluation import Procedure, edit_model, held_out, locality, reference
from editable_lm.metrics import edit_success, sequence_logprob
from editable_lm.models import edit_learning_rates, load_for_editing
from editable_lm.params import load_params
from editable_lm.split_forward import SplitForward
from editable_lm.storage import read_jsonl
from editable_lm.training import encode_edits

DEFAULT_PASSAGES = "data/split/passages_test.jsonl"


def edit_prefix(sentence: str, replace: str | None) -> str:
    """The text the new name must follow: the sentence up to `replace`, or all of it."""
    if replace is None:
        return sentence.rstrip()
    if replace not in sentence:
        raise EditLMError(f"--replace {replace!r}: not found in the sentence")
    prefix = sentence[: sentence.index(replace)].rstrip()
    if not prefix:
        raise EditLMError("the sentence has no text before the name to condition the edit on")
    return prefix


def generate(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of `prompt`."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sentence", help="a sentence; the new name goes where --replace is, or at its end")
    parser.add_argument("--name", required=True, help="the name to put in")
    parser.add_argument("--replace", help="the name in the sentence to replace")
    parser.add_argument("--model", default="models/editable", help="checkpoint directory (default: models/editable)")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt to generate from (repeatable)")
    parser.add_argument("--params", default="params.yaml", help="edit settings: edit.*, evaluate.edit_lr/edit_steps")
    parser.add_argument("--lr", type=float, help="edit learning rate (default: evaluate.edit_lr)")
    parser.add_argument("--steps", type=int, help="edit steps (default: evaluate.edit_steps)")
    parser.add_argument("--passages", help=f"JSONL passages for locality (default: {DEFAULT_PASSAGES} if present)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    params = load_params(args.params)
    lr = params.evaluate.edit_lr if args.lr is None else args.lr
    steps = params.evaluate.edit_steps if args.steps is None else args.steps
    # An empty name would "edit" toward a space; a NaN or infinite lr would print NaN results.
    if not args.name.strip():
        raise EditLMError("--name: must not be empty")
    if not (math.isfinite(lr) and lr >= 0):
        raise EditLMError(f"--lr: must be a finite number >= 0, got {lr}")
    if steps < 1:
        raise EditLMError(f"--steps: must be >= 1, got {steps}")
    prefix = edit_prefix(args.sentence, args.replace)
    model, tokenizer, names = load_for_editing(args.model, params.edit)
    split = SplitForward(model, names)
    batch = split.prepare(encode_edits([{"prefix": prefix, "new_name": args.name}], tokenizer, params.evaluate.seq_len))
    edited = edit_model(split, batch, Procedure("ft", edit_learning_rates(args.model, names, lr), steps))

    with torch.no_grad():
        before, after = split.target_logits(batch), split.target_logits(batch, edited)
    print(f"edit: {prefix!r} -> {args.name!r}  ({steps} step(s), lr {lr:g}, {len(names)} weight tensors)")
    print(f"log p(new name): {sequence_logprob(before, batch.targets).item():.2f} -> "
          f"{sequence_logprob(after, batch.targets).item():.2f}; "
          f"edit success: {bool(edit_success(after, batch.targets).item())}")

    passages_path = args.passages or (DEFAULT_PASSAGES if Path(DEFAULT_PASSAGES).is_file() else None)
    if passages_path:
        passages = held_out(read_jsonl(passages_path), params.evaluate.n_ppl_passages, params.evaluate.seed)
        ref = reference(split, tokenizer, passages, params.evaluate.seq_len)
        loc = locality(split, ref, edited)
        print(f"locality on {len(passages)} held-out passages: perplexity {ref.ppl:.2f} -> "
              f"{ref.ppl * (1 + loc['ppl_drawdown']):.2f} (drawdown {loc['ppl_drawdown']:+.2%}), "
              f"KL {loc['kl']:.4f}, top-1 agreement {loc['top1_agreement']:.1%}")
    else:
        print(f"locality: skipped (no {DEFAULT_PASSAGES}; pass --passages)")

    prompts = [prefix, *args.prompt] if args.prompt else [prefix, f"{args.name} is known for"]
    outputs = {prompt: generate(model, tokenizer, prompt, args.max_new_tokens) for prompt in prompts}
    with torch.no_grad():  # the edited weights go into this process's copy of the model
        for name, value in edited.items():
            model.get_parameter(name).copy_(value)
    for prompt in prompts:
        print(f"\nprompt: {prompt}\n  before: {outputs[prompt]}\n  after:  {generate(model, tokenizer, prompt, args.max_new_tokens)}")


def cli() -> None:
    """Entry point of `editable-lm-edit` and `python -m editable_lm.edit`."""
    run_stage(main)


if __name__ == "__main__":
    cli()
