"""Split passages and edit pairs into train/val/test by article. Pairs read from a CounterFact or zsRE file
(`pairs.source`) have articles of their own (their subjects), split with the same seed and fractions."""

import importlib.util
import sys

if importlib.util.find_spec("editable_lm") is None:  # a python outside .venv, e.g. dvc run from a plain shell
    sys.exit("error: editable_lm is not installed for this python; enter the environment first: source .venv/bin/activate")

from pathlib import Path

from editable_lm.cli import run_stage, stage_args
from editable_lm.params import NAME_SWAPS
from editable_lm.split import SPLITS, check_split, rows_in_split, sample_sizes, split_articles
from editable_lm.storage import atomic_path, read_jsonl, write_jsonl


def main() -> None:
    params, args = stage_args(__doc__, "--passages", "--pairs", "--out")
    passages, pairs = read_jsonl(args.passages), read_jsonl(args.pairs)
    assignment = split_articles([p["article_id"] for p in passages], params.split)
    pair_assignment = assignment if params.pairs.source == NAME_SWAPS else split_articles([p["article_id"] for p in pairs], params.split)
    parts = {(split, kind): rows_in_split(rows, by, split) for split in SPLITS
             for kind, rows, by in (("passages", passages, assignment), ("pairs", pairs, pair_assignment))}
    # Checked here, not in the evaluation stages, so that a too-small corpus fails before training.
    check_split({key: len(rows) for key, rows in parts.items()}, sample_sizes(params))
    with atomic_path(args.out) as tmp:
        for (split, kind), rows in parts.items():
            write_jsonl(Path(tmp, f"{kind}_{split}.jsonl"), rows)
        for split in SPLITS:
            print(f"{split}: {len(parts[split, 'passages'])} passages, {len(parts[split, 'pairs'])} edit pairs")


if __name__ == "__main__":
    run_stage(main)
