"""Fine-tune the base model on the LM loss alone: the baseline with the editable model's budget."""

import importlib.util
import sys

if importlib.util.find_spec("editable_lm") is None:  # a python outside .venv, e.g. dvc run from a plain shell
    sys.exit("error: editable_lm is not installed for this python; enter the environment first: source .venv/bin/activate")

from pathlib import Path

from editable_lm import distributed
from editable_lm.checkpoints import training_checkpoints
from editable_lm.cli import live_logger, run_stage, stage_args
from editable_lm.models import load_checkpoint, save_checkpoint
from editable_lm.storage import read_jsonl
from editable_lm.training import finetune


def main() -> None:
    params, args = stage_args(__doc__, "--base", "--split", "--out", "--live", optional=("--resume-dir",))
    passages_path = Path(args.split, "passages_train.jsonl")
    passages = read_jsonl(passages_path)
    model, tokenizer = load_checkpoint(args.base)
    checkpoints = training_checkpoints(args.resume_dir, "finetune", params.train, [args.base, passages_path])
    with live_logger(args.live) as live:
        model = finetune(model, tokenizer, passages, params.train, live, checkpoints)
    if distributed.is_main():  # every rank holds the same model
        save_checkpoint(model, tokenizer, args.out)
    checkpoints.clear()


if __name__ == "__main__":
    run_stage(main)
