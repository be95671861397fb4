"""torch.distributed with the gloo backend: real torchrun jobs of 2 processes on CPU against one process."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distributed_worker import data

ROOT = Path(__file__).parents[1]
WORKER = Path(__file__).parent / "distributed_worker.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def launch(nproc: int, job: str, out: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The job on `nproc` processes through the pipeline's launcher (`python -m editable_lm.launch`, as dvc.yaml)."""
    cmd = [sys.executable, "-m", "editable_lm.launch", "--nproc", str(nproc), str(WORKER), job, str(out), *args]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, cwd=ROOT)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def curve(live: Path) -> dict[str, list[float]]:
    """Every DVCLive curve a training job logged (name -> values by step)."""
    out = {}
    for tsv in sorted((live / "plots" / "metrics").rglob("*.tsv")):
        with open(tsv) as f:
            out[tsv.stem] = [float(row[tsv.stem]) for row in csv.DictReader(f, delimiter="\t")]
    return out


@pytest.mark.parametrize("trainer", ["finetune", "editable", "mend"])
def test_two_ranks_train_as_one_process_on_the_same_global_batch(trainer, tmp_path):
    """3 steps on batches of 4 passages (of different lengths: the ranks hold different token counts), 2 ranks of 2
    passages each and the step's edit, against one process (float64): the same weights (and learned rates), the same
    curves; rank 0 alone wrote them."""
    launch(1, "train", tmp_path, trainer, "3")
    launch(2, "train", tmp_path, trainer, "3")
    one, two = load_file(tmp_path / f"{trainer}-1.safetensors"), load_file(tmp_path / f"{trainer}-2.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-8, atol=1e-10, msg=name)
    if trainer != "mend":  # not vacuous: the steps moved what they train
        start = dict(data()[3].named_parameters())
        assert sum(not torch.equal(one[name], start[name].detach()) for name in start) > 5
    curves_one, curves_two = curve(tmp_path / f"live-{trainer}-1"), curve(tmp_path / f"live-{trainer}-2")
    assert curves_one.keys() == curves_two.keys() and len(next(iter(curves_one.values()))) == 3
    for name in curves_one:
        assert curves_two[name] == pytest.approx(curves_one[name], rel=1e-9), name


def test_a_checkpoint_from_two_ranks_resumes_on_one(tmp_path):
    """The editable model (learned inner rates, Adam, both seeded streams): 2 steps on 2 ranks leave a checkpoint,
    one process resumes it to step 4, and ends where 4 uninterrupted steps on one process end."""
    launch(2, "train", tmp_path, "editable", "2", str(tmp_path / "checkpoint"))
    assert (tmp_path / "checkpoint" / "state.json").is_file()
    resumed = launch(1, "train", tmp_path, "editable", "4", str(tmp_path / "checkpoint"))
    assert "resuming at step 2" in resumed.stdout
    resumed_weights = load_file(tmp_path / "editable-1.safetensors")
    launch(1, "train", tmp_path, "editable", "4")
    straight = load_file(tmp_path / "editable-1.safetensors")
    for name in straight:
        torch.testing.assert_close(resumed_weights[name], straight[name], rtol=1e-8, atol=1e-10, msg=name)


def test_sharded_evaluation_gives_the_one_process_rows(tmp_path):
    """`evaluate_edits` over 7 edits (leakage probes drawn from a seeded stream, fluency on the first 3): 2 ranks'
    gathered rows are the one-process rows, value for value, in the same order (timings aside)."""
    launch(1, "evaluate", tmp_path)
    launch(2, "evaluate", tmp_path)
    one, two = (json.loads((tmp_path / f"rows-{n}.json").read_text()) for n in (1, 2))
    assert len(one) == 14 and sum(row["fluency"] is not None for row in one) == 6
    assert [{k: v for k, v in row.items() if k != "sec_per_edit"} for row in two] == \
           [{k: v for k, v in row.items() if k != "sec_per_edit"} for row in one]


def test_sharded_rows_come_back_in_order(tmp_path):
    """7 items over 2 ranks (4 and 3): every row, in item order, each made by its own rank."""
    launch(2, "rows", tmp_path)
    rows = json.loads((tmp_path / "rows-2.json").read_text())
    assert [r["item"] for r in rows] == list(range(7))
    assert [r["rank"] for r in rows] == [i % 2 for i in range(7)] and all(r["square"] == r["item"] ** 2 for r in rows)


def test_a_rank_that_dies_ends_the_job_with_one_line_and_no_output(tmp_path):
    """Rank 1 is killed (SIGKILL) before a gather: the launcher stops rank 0, exits non-zero and says so in one
    line; rank 0's output, due after the gather, is not written."""
    result = launch(2, "die", tmp_path, check=False)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: rank 1 of 2 was killed by SIGKILL; the other ranks were stopped and no output was written"], \
        result.stderr[-2000:]
    assert not (tmp_path / "rows.json").exists()


def test_the_launcher_refuses_a_bad_process_count_and_reads_run_nproc(tmp_path):
    """`--nproc` must be a count; without it the launcher takes `run.nproc` of the script's `--params` (a bad params
    file: its one-line error), as dvc.yaml's stage commands do."""
    def launcher(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "editable_lm.launch", *args], env=ENV, capture_output=True,
                              text=True, cwd=ROOT)

    for bad in (["--nproc", "0", str(WORKER)], ["--nproc", "two", str(WORKER)], ["--nproc", "2"]):
        result = launcher(*bad)
        assert result.returncode == 2 and result.stderr.startswith("usage: python -m editable_lm.launch [--nproc N]")
    (tmp_path / "params.yaml").write_text("run:\n  nproc: 2\ntrain:\n  batch_size: 4\n")
    launcher(str(WORKER), "rows", str(tmp_path), "--params", str(tmp_path / "params.yaml"))
    assert [row["rank"] for row in json.loads((tmp_path / "rows-2.json").read_text())] == [0, 1, 0, 1, 0, 1, 0]
    (tmp_path / "params.yaml").write_text("run:\n  nproc: 0\n")
    result = launcher(str(WORKER), "rows", str(tmp_path), "--params", str(tmp_path / "params.yaml"))
    assert (result.returncode, result.stderr) == (1, "error: run.nproc: must be >= 1, got 0\n")


def test_the_evaluate_stage_on_two_ranks_writes_the_one_process_outputs(smoke_run, tmp_path):
    """The real `evaluate` stage of the reproduced smoke repository, started as dvc.yaml starts it but on 2 ranks:
    its headline metrics equal the committed one-process run's, and so does every row (timings aside)."""
    from smoke import run

    repo = smoke_run.copy(tmp_path / "editable-lm")
    inputs = ["--split", "data/split", "--tuned", "metrics/tune.json", "--base", "models/base",
              "--finetuned", "models/finetuned", "--editable", "models/editable"]
    outputs = ["--metrics", "two/evaluate.json", "--details", "two/details.json", "--rows", "two/rows.csv"]
    run([sys.executable, "-m", "editable_lm.launch", "--nproc", "2", "stages/evaluate.py", *inputs, *outputs], repo)
    assert json.loads((repo / "two/evaluate.json").read_text()) == json.loads((repo / "metrics/evaluate.json").read_text())

    def rows(path: Path) -> list[dict]:
        with open(path) as f:
            return [{k: v for k, v in row.items() if k != "sec_per_edit"} for row in csv.DictReader(f)]

    assert rows(repo / "two/rows.csv") == rows(repo / "metrics/evaluate_edits.csv") and len(rows(repo / "two/rows.csv")) > 10


def test_a_stopped_launcher_stops_its_ranks_with_one_line(tmp_path):
    """SIGTERM to the launcher while its ranks work (2 training steps): one line, status 128 + 15, no output."""
    import signal
    import time

    cmd = [sys.executable, "-m", "editable_lm.launch", "--nproc", "2", str(WORKER), "train", str(tmp_path), "editable", "200"]
    launcher = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not (tmp_path / "live-editable-2").exists() and time.monotonic() < deadline:  # rank 0 is training
        time.sleep(0.2)
    launcher.send_signal(signal.SIGTERM)
    stderr = launcher.communicate(timeout=120)[1]
    assert launcher.returncode == 128 + signal.SIGTERM
    # rank 0's progress bar, then the one line (no traceback, no torch warnings)
    assert stderr.rstrip().endswith("interrupted (SIGTERM); the ranks were stopped and no output was written")
    assert "Traceback" not in stderr and "W1" not in stderr and stderr.count("interrupted") == 1, stderr[-2000:]
    assert not (tmp_path / "editable-2.safetensors").exists()
