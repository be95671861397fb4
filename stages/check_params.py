"""Validate all of params.yaml before any stage runs (DVC deletes a stage's outputs before running it)."""

import importlib.util
import sys

if importlib.util.find_spec("editable_lm") is None:  # a python outside .venv, e.g. dvc run from a plain shell
    sys.exit("error: editable_lm is not installed for this python; enter the environment first: source .venv/bin/activate")

from pathlib import Path

from editable_lm.cli import run_stage, stage_args


def main() -> None:
    _, args = stage_args(__doc__, "--out", complete=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    # Constant content: a valid change to params.yaml must not rerun stages through this file.
    Path(args.out).write_text("params.yaml is valid\n")


if __name__ == "__main__":
    run_stage(main)
