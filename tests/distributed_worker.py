"""One rank of `tests/test_distributed.py`'s torchrun jobs: `python -m torch.distributed.run --standalone
--nproc-per-node N tests/distributed_worker.py JOB OUT`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from conftest import random_batch, tiny_gpt2  # noqa: E402

from editable_lm import distributed  # noqa: E402
from editable_lm.models import edit_parameter_names  # noqa: E402
from editable_lm.params import EditableParams, EditParams  # noqa: E402
from editable_lm.split_forward import SplitForward  # noqa: E402
from editable_lm.training import editable_losses  # noqa: E402

N_SAMPLES = 4  # the global outer batch: (passage, edit) samples


def maml_sample(split: SplitForward, index: int):
    """The outer loss of MAML sample `index`: a passage and an edit of their own seeds, two second-order steps."""
    cfg = EditableParams(inner_steps=2, inner_lr=0.1, cloc=10.0)
    return editable_losses(split, random_batch(100 + index, length=12), random_batch(200 + index, 8, 3), 0.1, cfg)["total"]


def maml_gradients(out: Path) -> None:
    """This rank's share of the global batch; gradients averaged over the ranks; rank 0 saves them."""
    rank, world = distributed.init()
    model = tiny_gpt2().double()
    split = SplitForward(model, edit_parameter_names(model, EditParams(blocks=2, module="mlp")))
    mine = distributed.shard(range(N_SAMPLES), rank, world)
    loss = sum(maml_sample(split, i) for i in mine) * world / N_SAMPLES  # this rank's part of the global mean
    loss.backward()
    parameters = list(model.parameters())
    distributed.average_gradients(parameters)
    if rank == 0:
        names = [name for name, _ in model.named_parameters()]
        save_file({n: p.grad.contiguous() for n, p in zip(names, parameters)}, out / f"grads-{world}.safetensors")


def gathered_rows(out: Path) -> None:
    rank, world = distributed.init()
    rows = [{"item": i, "rank": rank, "square": i * i} for i in distributed.shard(range(7), rank, world)]
    every = distributed.gather_shards(rows, 7)
    if rank == 0:
        (out / f"rows-{world}.json").write_text(json.dumps(every))


if __name__ == "__main__":
    job, out = sys.argv[1], Path(sys.argv[2])
    {"maml": maml_gradients, "rows": gathered_rows}[job](out)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
