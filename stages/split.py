"""Split passages and edit pairs into train/val/test by article."""

import importlib.util
import sys

if importlib.util.find_spec("editable_lm") is None:  # a python outside .venv, e.g. dvc run from a plain shell
    sys.exit("error: editable_lm is not installed for this python; enter the environment first: source .venv/bin/activate")

from pathlib import Path

from editable_lm.cli import run_stage, stage_args
from editable_lm.split import SPLITS, rows_in_split, split_articles
from editable_lm.storage import atomic_path, read_jsonl, write_jsonl


def main() -> None:
    params, args = stage_args(__doc__, "--passages", "--pairs", "--out")
    passages, pairs = read_jsonl(args.passages), read_jsonl(args.pairs)
    assignment = split_articles([p["article_id"] for p in passages], params.split)
    with atomic_path(args.out) as tmp:
        for split in SPLITS:
            n_passages = write_jsonl(Path(tmp, f"passages_{split}.jsonl"), rows_in_split(passages, assignment, split))
            n_pairs = write_jsonl(Path(tmp, f"pairs_{split}.jsonl"), rows_in_split(pairs, assignment, split))
            print(f"{split}: {n_passages} passages, {n_pairs} edit pairs")


if __name__ == "__main__":
    run_stage(main)
