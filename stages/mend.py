"""Train MEND's editor network for `mend.model` (the base model, or the fine-tuned one) on the editable model's
budget (same steps, data, seeds)."""

import importlib.util
import sys

if importlib.util.find_spec("editable_lm") is None:  # a python outside .venv, e.g. dvc run from a plain shell
    sys.exit("error: editable_lm is not installed for this python; enter the environment first: source .venv/bin/activate")

from pathlib import Path

from editable_lm import distributed
from editable_lm.checkpoints import training_checkpoints
from editable_lm.cli import live_logger, run_stage, stage_args
from editable_lm.mend import EDITOR_FILE, save_mend, train_mend
from editable_lm.models import load_checkpoint
from editable_lm.storage import atomic_path, read_jsonl


def main() -> None:
    params, args = stage_args(__doc__, "--base", "--finetuned", "--split", "--out", "--live", optional=("--resume-dir",))
    edited = {"base": args.base, "finetuned": args.finetuned}[params.mend.model]
    inputs = [edited, Path(args.split, "passages_train.jsonl"), Path(args.split, "pairs_train.jsonl")]
    passages, pairs = read_jsonl(inputs[1]), read_jsonl(inputs[2])
    model, tokenizer = load_checkpoint(edited)
    checkpoints = training_checkpoints(args.resume_dir, "mend", params.train, inputs, mend=params.mend, edit=params.edit)
    with live_logger(args.live) as live:
        mend = train_mend(model, tokenizer, passages, pairs, params.train, params.mend, params.edit, live, checkpoints)
    if distributed.is_main():  # every rank holds the same editor
        with atomic_path(args.out) as tmp:
            tmp.mkdir()
            save_mend(mend, Path(tmp, EDITOR_FILE))
    checkpoints.clear()


if __name__ == "__main__":
    run_stage(main)
