"""torch.distributed with the gloo backend: real torchrun jobs of 2 processes on CPU against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

WORKER = Path(__file__).parent / "distributed_worker.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(nproc: int, job: str, out: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", str(WORKER), job, str(out)]
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), job, str(out)]  # no launcher: the one-process path
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_ranks_average_to_the_one_process_maml_gradient(tmp_path):
    """The MAML outer gradient of a global batch of 4 (passage, edit) samples: 2 ranks of 2 samples each, gradients
    all-reduced, equal one process's over all 4 (float64, second-order, tiny GPT-2)."""
    torchrun(1, "maml", tmp_path)
    torchrun(2, "maml", tmp_path)
    one, two = load_file(tmp_path / "grads-1.safetensors"), load_file(tmp_path / "grads-2.safetensors")
    assert one.keys() == two.keys()
    assert sum(int(g.abs().sum() > 0) for g in one.values()) > 10  # the gradient reaches many tensors
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-10, atol=1e-12, msg=name)


def test_sharded_rows_come_back_in_order_on_rank_zero(tmp_path):
    """7 items over 2 ranks (4 and 3): rank 0 gets every row, in item order, each made by its own rank."""
    torchrun(2, "rows", tmp_path)
    rows = json.loads((tmp_path / "rows-2.json").read_text())
    assert [r["item"] for r in rows] == list(range(7))
    assert [r["rank"] for r in rows] == [i % 2 for i in range(7)] and all(r["square"] == r["item"] ** 2 for r in rows)
