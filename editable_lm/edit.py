"""Apply one edit to a checkpoint and show what it changed.

    python -m editable_lm.edit --model models/editable \\
        "The theory of relativity was developed by Albert Einstein." --replace "Albert Einstein" --name "Marie Curie"

--editor is any editor of `editable_lm.editors`. With rome or memit, edits at the setting the `editors` stage chose
on validation edits (metrics/editors_details.json; --layer overrides the layer), with the second moments of the
`layer_stats` stage; with mend, with the editor network the `mend` stage trained (--mend). With a gradient editor (ft, the default; ft_kl; until_success), edits at the learning rate the
`tune` stage chose for this model on validation edits (metrics/tune.json, the entry named like the --model
directory), else at evaluate.edit_lr; --lr overrides both. Prints the new name's log-probability before and after, the locality
figures (perplexity drawdown, KL, top-1 agreement) on held-out passages, and greedy
generations for a few prompts before and after the edit, each with its fluency (ROME's
weighted bigram/trigram entropy, editable_lm.fluency).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import torch

from editable_lm.cli import run_stage
from editable_lm.editors import BUILDERS, Resources, build, edited_blocks, gradient, key_contexts, settings
from editable_lm.errors import EditLMError
from editable_lm.evaluation import held_out
from editable_lm.layer_stats import load_moments
from editable_lm.mend import EDITOR_FILE
from editable_lm.locality import locality, reference
from editable_lm.fluency import generate, mean_ngram_entropy, ngram_entropy
from editable_lm.metrics import edit_success, sequence_logprob
from editable_lm.models import edit_learning_rates, load_for_editing
from editable_lm.params import load_params
from editable_lm.split_forward import SplitForward
from editable_lm.storage import read_jsonl
from editable_lm.training import encode_edits

DEFAULT_PASSAGES = "data/split/passages_test.jsonl"
DEFAULT_TUNED = "metrics/tune.json"
DEFAULT_STATS = "models/layer_stats.safetensors"
DEFAULT_EDITORS = "metrics/editors_details.json"
DEFAULT_MEND = "models/mend"
DEFAULT_VAL_PASSAGES = "data/split/passages_val.jsonl"


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


def tuned_lr(path: str | Path, label: str) -> float | None:
    """The edit lr the `tune` stage chose for the model `label` (top-level key of tune.json), or None
    if the file or the label is missing; a file that is not JSON or a bad `edit_lr` is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        return None
    tuned = json_object(path, "one entry per model")
    if label not in tuned:
        return None
    entry = tuned[label]
    lr = entry.get("edit_lr") if isinstance(entry, dict) else None
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise EditLMError(f"{path}: {label}.edit_lr: must be a positive finite number, got {lr!r}")
    return float(lr)


def json_object(path: Path, holding: str) -> dict:
    """A metrics file's JSON object; not JSON, or not an object, is a one-line error naming the file."""
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EditLMError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise EditLMError(f"{path}: expected an object with {holding}, got {type(value).__name__}")
    return value


def choose_lr(given: float | None, tuned_path: str, label: str, params_lr: float, params_path: str) -> tuple[float, str]:
    """The edit lr and where it came from: --lr, else the tuned lr of `label`, else evaluate.edit_lr."""
    if given is not None:
        return given, "--lr"
    lr = tuned_lr(tuned_path, label)
    if lr is not None:
        return lr, f"tuned for {label!r} on validation edits, {tuned_path}"
    why = f"no {tuned_path}" if not Path(tuned_path).is_file() else f"no {label!r} entry in {tuned_path}"
    return params_lr, f"evaluate.edit_lr in {params_path}; {why}"


def editor_setting(name: str, details_path: str, layer: int | None, params) -> tuple[dict, str]:
    """A closed-form editor's setting: the one the `editors` stage chose on validation edits, its layer replaced
    by `layer` if given; without a chosen one, `layer` and the editor's first other candidate settings."""
    first = settings(name, params)[0]
    if first == {}:
        return {}, "nothing to choose"
    path = Path(details_path)
    entry = json_object(path, "one entry per editor").get(name) if path.is_file() else None
    chosen = entry.get("setting") if isinstance(entry, dict) else None
    if chosen is not None:  # over the first candidate: a setting saved before a key was chosen lacks it
        chosen = {**first, **chosen}
        return ({**chosen, "layer": layer}, "--layer") if layer is not None else (chosen, f"chosen on validation edits, {path}")
    if layer is None:
        raise EditLMError(f"--editor {name}: no setting chosen in {path} (run `dvc repro editors`), or give --layer")
    return {**first, "layer": layer}, "--layer"


def base_editor(name: str, setting: dict, source: str, split: SplitForward, args, params):
    """An editor of the base model as the `editors` stage builds it: its setting; ROME's and MEMIT's layers' second
    moments and key contexts, MEND's trained network."""
    if "layer" not in setting:
        print(f"{name}: {args.mend}")
        return build(name, params, setting, Resources(split=split, mend=str(Path(args.mend, EDITOR_FILE))))
    moments = load_moments(args.stats, list(edited_blocks(setting)))
    contexts = key_contexts(read_jsonl(DEFAULT_VAL_PASSAGES), params) if Path(DEFAULT_VAL_PASSAGES).is_file() else ()
    print(f"{name}: {', '.join(f'{k} {v:g}' for k, v in setting.items())} ({source}); key averaged over "
          f"{len(contexts)} context(s)" + ("" if contexts else f" (no {DEFAULT_VAL_PASSAGES})"))
    return build(name, params, setting, Resources(moments=moments, contexts=contexts))


def gradient_editor(name: str, split: SplitForward, tokenizer, lr, steps: int | None, params):
    """A gradient editor as the `evaluate` stage builds it (FT+KL's locality sample: the validation passages)."""
    loc_passages = (held_out(read_jsonl(DEFAULT_VAL_PASSAGES), params.ft_kl.n_loc_passages, params.evaluate.seed)
                    if Path(DEFAULT_VAL_PASSAGES).is_file() else [])
    editor = build(name, params, None, Resources(split, tokenizer, params.evaluate.seq_len, lr, loc_passages))
    return editor if steps is None else dataclasses.replace(editor, steps=steps)


def prefix_cut(tokenizer, prefix: str, name: str, max_len: int) -> tuple[int, int] | None:
    """(tokens of prefix + name, prefix tokens kept) if `encode_edit` cuts the prefix to fit `max_len`, else None."""
    n_name = len(tokenizer(" " + name, add_special_tokens=False)["input_ids"])
    n_prefix = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    if n_prefix + n_name <= max_len:
        return None
    return n_prefix + n_name, min(n_prefix, max(1, max_len - n_name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sentence", help="a sentence; the new name goes where --replace is, or at its end")
    parser.add_argument("--name", required=True, help="the name to put in")
    parser.add_argument("--replace", help="the name in the sentence to replace")
    parser.add_argument("--model", default="models/editable", help="checkpoint directory (default: models/editable)")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt to generate from (repeatable)")
    parser.add_argument("--params", default="params.yaml", help="edit settings: edit.*, evaluate.edit_lr/edit_steps/seq_len")
    parser.add_argument("--tuned", default=DEFAULT_TUNED,
                        help=f"the tune stage's learning rates, by model label (default: {DEFAULT_TUNED})")
    parser.add_argument("--lr", type=float,
                        help="edit learning rate (default: the tuned lr of the --model directory's name in --tuned, "
                             "else evaluate.edit_lr)")
    parser.add_argument("--steps", type=int,
                        help="gradient editors: edit steps (default: evaluate.edit_steps; until_success.max_steps)")
    parser.add_argument("--passages", help=f"JSONL passages for locality (default: {DEFAULT_PASSAGES} if present)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--editor", default="ft", choices=tuple(BUILDERS),
                        help="ft (default), ft_kl, until_success: gradient steps at the tuned lr; rome, memit: the "
                             "closed-form editors, mend: the trained editor (for the base model, as the editors stage "
                             "runs them)")
    parser.add_argument("--mend", default=DEFAULT_MEND, help=f"mend: the trained editor (default: {DEFAULT_MEND})")
    parser.add_argument("--layer", type=int, help="rome/memit: the edit layer (default: the editors stage's choice)")
    parser.add_argument("--stats", default=DEFAULT_STATS, help=f"rome/memit: second moments (default: {DEFAULT_STATS})")
    parser.add_argument("--editors-details", default=DEFAULT_EDITORS,
                        help=f"rome/memit: the settings chosen on validation edits (default: {DEFAULT_EDITORS})")
    args = parser.parse_args()

    params = load_params(args.params)
    label = Path(args.model).resolve().name  # models/editable -> "editable", as tune.json names the models
    lr, lr_source = choose_lr(args.lr, args.tuned, label, params.evaluate.edit_lr, args.params)
    # An empty name would "edit" toward a space; a NaN or infinite lr would print NaN results.
    if not args.name.strip():
        raise EditLMError("--name: must not be empty")
    if not all(prompt.strip() for prompt in args.prompt):
        raise EditLMError("--prompt: must not be empty")
    if not (math.isfinite(lr) and lr >= 0):
        raise EditLMError(f"--lr: must be a finite number >= 0, got {lr}")
    if args.steps is not None and args.steps < 1:
        raise EditLMError(f"--steps: must be >= 1, got {args.steps}")
    if args.max_new_tokens < 1:
        raise EditLMError(f"--max-new-tokens: must be >= 1, got {args.max_new_tokens}")
    prefix = edit_prefix(args.sentence, args.replace)
    by_gradient = args.editor in gradient.NAMES
    if by_gradient:
        print(f"lr {lr:g} ({lr_source})")
    else:  # before the model loads: a missing setting is a quick one-line error
        setting, source = editor_setting(args.editor, args.editors_details, args.layer, params)
    model, tokenizer, names = load_for_editing(args.model, params.edit)
    seq_len = params.evaluate.seq_len
    cut = prefix_cut(tokenizer, prefix, args.name, seq_len)
    if cut:
        print(f"note: prefix + name is {cut[0]} tokens, more than evaluate.seq_len {seq_len}: "
              f"the edit sees only the prefix's last {cut[1]} token(s) (cut from the left to fit)")
    pair = {"prefix": prefix, "new_name": args.name}
    if by_gradient:
        split = SplitForward(model, names)
        editor = gradient_editor(args.editor, split, tokenizer, edit_learning_rates(args.model, names, lr), args.steps, params)
    else:
        editor = base_editor(args.editor, setting, source, SplitForward(model, names), args, params)
        names = editor.weight_names(model)
        split = SplitForward(model, names)
    batch = split.prepare(encode_edits([pair], tokenizer, seq_len))
    edited, steps = editor.edit(split, tokenizer, batch, [pair], seq_len)

    with torch.no_grad():
        before, after = split.target_logits(batch), split.target_logits(batch, edited)
    how = f"{steps} step(s), lr {lr:g}, {args.editor}" if by_gradient else args.editor
    print(f"edit: {prefix!r} -> {args.name!r}  ({how}, {len(names)} weight tensors)")
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
    texts_before = generate(model, tokenizer, prompts, args.max_new_tokens)
    texts_after = generate(model, tokenizer, prompts, args.max_new_tokens, weights=edited)  # the model is left as it was
    for prompt, text_before, text_after in zip(prompts, texts_before, texts_after):
        print(f"\nprompt: {prompt}\n  before: [fluency {ngram_entropy(text_before):.2f}] {text_before}"
              f"\n  after:  [fluency {ngram_entropy(text_after):.2f}] {text_after}")
    print(f"\nfluency (weighted bigram/trigram entropy, mean over {len(prompts)} prompts): "
          f"{mean_ngram_entropy(texts_before):.2f} -> {mean_ngram_entropy(texts_after):.2f}")


def cli() -> None:
    """Entry point of `editable-lm-edit` and `python -m editable_lm.edit`."""
    run_stage(main)


if __name__ == "__main__":
    cli()
