"""Run a stage script on N processes of this machine: `python -m editable_lm.launch [--nproc N] SCRIPT [ARGS...]`.

N is `run.nproc` of the stage's params file (its `--params`, default params.yaml) unless `--nproc` gives it; dvc.yaml
lists `run.nproc` among the stage's params rather than interpolating it into the command, so that a broken params
file still fails in `check_params` with its own one-line error. N = 1 is the plain one-process stage (`python SCRIPT ARGS`, replaced in place: nothing else runs). N > 1 starts
N ranks with torchrun's machinery (`torch.distributed.run`, a standalone rendezvous on localhost, no restarts),
each with its share of the machine's threads unless OMP_NUM_THREADS is set. If a rank fails, the others are
stopped and one line names it; rank 0 writes the outputs only at the very end, so nothing is half-written.
Several machines: run `torchrun` with its rendezvous arguments on each (README, "More processes, more GPUs").
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid

LOST_PEERS = 3  # the status of a rank whose peers died mid-collective (`cli.run_stage`): not the cause
UNDER_LAUNCHER = "EDITABLE_LM_LAUNCHER"  # set for the ranks: this launcher reports lost peers, not each rank
USAGE = "usage: python -m editable_lm.launch [--nproc N] SCRIPT [ARGS...]  (N: processes; default run.nproc of --params)"


def threads_per_rank(nproc: int) -> int:
    """The machine's cores shared among the ranks, at least one each."""
    return max(1, (os.cpu_count() or 1) // nproc)


def failure_line(failures: dict[int, object], nproc: int) -> str | None:
    """One line for the rank whose failure stopped the job (torch's `ProcessFailure`s by rank), or None if that
    rank printed its own error (status 1). The cause is a rank killed by a signal other than the launcher's
    SIGTERM, else one that failed by itself (not status LOST_PEERS), else the lowest."""
    def signal_name(code: int) -> str | None:
        try:
            return signal.Signals(-code).name if code < 0 else None
        except ValueError:
            return None

    def rank_of_cause() -> int:
        ranks = sorted(failures)
        for own in (lambda c: signal_name(c) not in (None, "SIGTERM"), lambda c: c > 0 and c != LOST_PEERS):
            found = [rank for rank in ranks if own(failures[rank].exitcode)]
            if found:
                return found[0]
        return ranks[0]

    rank = rank_of_cause()
    code = failures[rank].exitcode
    if code == 1:
        return None
    how = f"was killed by {signal_name(code)}" if signal_name(code) else f"exited with status {code}"
    return f"error: rank {rank} of {nproc} {how}; the other ranks were stopped and no output was written"


def process_count(args: list[str]) -> int:
    """`run.nproc` of the params file the stage is given (`--params PATH`, default params.yaml)."""
    from editable_lm.params import load_params

    path = next((args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--params"), "params.yaml")
    return load_params(path).run.nproc


def main(argv: list[str]) -> int:
    nproc = None
    if argv[:1] == ["--nproc"]:
        if len(argv) < 2 or not argv[1].isdigit() or int(argv[1]) < 1:
            print(USAGE, file=sys.stderr)
            return 2
        nproc, argv = int(argv[1]), argv[2:]
    if not argv or argv[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    script, args = argv[0], argv[1:]
    if not os.path.isfile(script):
        print(f"error: {script}: no such stage script", file=sys.stderr)
        return 2
    if nproc is None:
        from editable_lm.errors import EditLMError

        try:
            nproc = process_count(args)
        except EditLMError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    command = [sys.executable, script, *args]
    if nproc == 1:
        os.execv(sys.executable, command)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_rank(nproc)))
    os.environ[UNDER_LAUNCHER] = "1"
    for name in list(logging.root.manager.loggerDict):  # torch's warnings and tracebacks: this launcher says it
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    try:
        elastic_launch(config, sys.executable)(*command[1:])
    except ChildFailedError as exc:
        line = failure_line(exc.failures, nproc)
        if line:
            print(line, file=sys.stderr)
        return 1
    except SignalException as exc:  # Ctrl-C or a kill of the launcher: torch has stopped the ranks
        print(f"interrupted ({exc.sigval.name}); the ranks were stopped and no output was written", file=sys.stderr)
        return 128 + exc.sigval.value
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
