"""Figures and a Markdown report comparing the three models and the editors, from the evaluation metrics."""

from editable_lm.cli import run_stage, stage_args
from editable_lm.report import write_report
from editable_lm.storage import read_csv, read_json


def main() -> None:
    _, args = stage_args(
        __doc__, "--evaluate", "--tune", "--tune-grid", "--sweep", "--sweep-rows", "--sequential", "--batched", "--figures", "--out",
        optional=("--editors",),
    )
    write_report(
        read_json(args.evaluate), read_json(args.tune), read_json(args.tune_grid), read_json(args.sweep), read_csv(args.sweep_rows),
        read_csv(args.sequential), read_csv(args.batched), figures=args.figures, out=args.out,
        editors=read_json(args.editors) if args.editors else None,
    )


if __name__ == "__main__":
    run_stage(main)
