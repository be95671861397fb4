"""What every stage script shares: argument parsing, params loading and one-line errors."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from typing import Callable

import torch.distributed as dist

from editable_lm import distributed
from editable_lm.errors import EditLMError
from editable_lm.launch import LOST_PEERS, UNDER_LAUNCHER
from editable_lm.params import Params, load_params


def stage_args(
    description: str, *paths: str, optional: tuple[str, ...] = (), complete: bool = False
) -> tuple[Params, argparse.Namespace]:
    """Parse `--params` plus the named path arguments (`optional` ones default to None), and load validated params.

    `complete`: every section must be in the file (check_params, which guards the pipeline).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="pipeline parameters (default: params.yaml)")
    for path in paths:
        parser.add_argument(path, required=True)
    for path in optional:
        parser.add_argument(path)
    args = parser.parse_args()
    return load_params(args.params, complete=complete), args


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage; a user-facing error becomes one line on stderr and exit status 1, Ctrl-C exit 130.

    Under torchrun (`python -m editable_lm.launch N`) the stage joins the process group first; the ranks other
    than 0 print no progress and no messages but their errors (rank 0 alone writes the stage's outputs).
    """
    try:
        distributed.init()
        if not distributed.is_main():
            from tqdm import tqdm  # no progress bars: tqdm reads TQDM_DISABLE when imported, so set the default

            tqdm.__init__ = functools.partialmethod(tqdm.__init__, disable=True)
            sys.stdout = open(os.devnull, "w")
        main()
    except EditLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        # 130 = 128 + SIGINT, what a shell reports for a process stopped by Ctrl-C.
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as exc:  # DistError, or gloo's plain RuntimeError: another rank died mid-collective
        rank, world = distributed.rank_and_world()
        if world == 1 or not (isinstance(exc, dist.DistError) or _raised_in_a_collective(exc)):
            raise
        if UNDER_LAUNCHER not in os.environ:  # else `editable_lm.launch` names the rank that died
            print(f"error: rank {rank} of {world} lost the other ranks ({type(exc).__name__})", file=sys.stderr)
        sys.exit(LOST_PEERS)
    finally:
        distributed.close()


def _raised_in_a_collective(exc: BaseException) -> bool:
    """Whether `exc` came out of torch.distributed's code (a collective whose peer is gone)."""
    tb = exc.__traceback__
    while tb is not None:
        if f"torch{os.sep}distributed{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def live_logger(path: str):
    """DVCLive writer for training curves (rank 0's; a no-op context on the other ranks); the plots are declared in
    dvc.yaml, not by DVCLive."""
    from dvclive import Live

    if not distributed.is_main():
        return contextlib.nullcontext(None)
    return Live(path, save_dvc_exp=False, dvcyaml=None)
