"""Meta-train the editable model (Editable Neural Networks: MAML over edits). `--finetuned` is read only with
`editable.loc_reference: finetuned` (locality's KL then keeps the fine-tuned model's predictions)."""

import importlib.util
import sys

if importlib.util.find_spec("editable_lm") is None:  # a python outside .venv, e.g. dvc run from a plain shell
    sys.exit("error: editable_lm is not installed for this python; enter the environment first: source .venv/bin/activate")

from pathlib import Path

from safetensors.torch import save_file

from editable_lm import distributed
from editable_lm.checkpoints import training_checkpoints
from editable_lm.cli import live_logger, run_stage, stage_args
from editable_lm.models import INNER_LR_SCALE_FILE, load_checkpoint, save_checkpoint
from editable_lm.storage import atomic_path, read_jsonl
from editable_lm.training import train_editable


def main() -> None:
    params, args = stage_args(__doc__, "--base", "--finetuned", "--split", "--out", "--live", optional=("--resume-dir",))
    inputs = [args.base, Path(args.split, "passages_train.jsonl"), Path(args.split, "pairs_train.jsonl")]
    passages, pairs = read_jsonl(inputs[1]), read_jsonl(inputs[2])
    model, tokenizer = load_checkpoint(args.base)
    reference = {"self": None, "base": args.base, "finetuned": args.finetuned}[params.editable.loc_reference]
    reference_model = load_checkpoint(reference)[0] if reference else None
    inputs += [reference] if reference else []
    checkpoints = training_checkpoints(
        args.resume_dir, "editable", params.train, inputs, editable=params.editable, edit=params.edit
    )
    with live_logger(args.live) as live:
        model, inner_lr = train_editable(
            model, tokenizer, passages, pairs, params.train, params.editable, params.edit, live, checkpoints,
            reference_model,
        )
    if distributed.is_main():  # every rank holds the same model
        with atomic_path(args.out) as tmp:
            save_checkpoint(model, tokenizer, tmp)
            if params.editable.learn_lr:
                scales = {n: (lr / params.editable.inner_lr).reshape(1).cpu() for n, lr in inner_lr.items()}
                save_file(scales, Path(tmp, INNER_LR_SCALE_FILE))
    checkpoints.clear()


if __name__ == "__main__":
    run_stage(main)
