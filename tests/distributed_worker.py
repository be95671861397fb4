"""One rank of `tests/test_distributed.py`'s torchrun jobs: `python -m torch.distributed.run --standalone
--nproc-per-node N tests/distributed_worker.py JOB OUT [ARGS]` (or plain `python ...` for one process)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_gpt2, training_data, word_tokenizer  # noqa: E402

from editable_lm import distributed  # noqa: E402
from editable_lm.checkpoints import Checkpoints  # noqa: E402
from editable_lm.cli import live_logger, run_stage  # noqa: E402
from editable_lm.editors.gradient import strength_grid  # noqa: E402
from editable_lm.evaluation import evaluate_edits, reference  # noqa: E402
from editable_lm.mend import train_mend  # noqa: E402
from editable_lm.models import edit_parameter_names  # noqa: E402
from editable_lm.params import EditableParams, EditParams, MendParams, TrainParams  # noqa: E402
from editable_lm.split_forward import SplitForward  # noqa: E402
from editable_lm.storage import write_json  # noqa: E402
from editable_lm.training import finetune, train_editable  # noqa: E402

EDIT = EditParams(blocks=2, module="mlp")


def data():
    """Six people's passages (of different lengths, so ranks hold different token counts) and edits, a
    word-level tokenizer over them, and a tiny float64 GPT-2 of its vocabulary."""
    passages, pairs = training_data()
    passages = [{**p, "text": p["text"] + " and more" * (p["id"] % 3)} for p in passages]
    texts = [p["text"] for p in passages] + [f"{q['prefix']} {q['name']} {q['new_name']}" for q in pairs]
    texts += [f"{r['prefix']} {r['name']} {r['new_name']}" for q in pairs for r in q["probes"]]
    tokenizer = word_tokenizer(texts)
    return passages, pairs, tokenizer, tiny_gpt2(len(tokenizer)).double()


def train(out: Path, trainer: str, steps: str, resume: str = "") -> None:
    """`steps` steps of `trainer` (finetune, editable, mend) on batches of 4 passages; rank 0 saves what trained
    (`{trainer}-{world}.safetensors`) and DVCLive curves. `resume`: a checkpoint directory, every 2 steps."""
    _, world = distributed.rank_and_world()
    passages, pairs, tokenizer, model = data()
    params = TrainParams(steps=int(steps), lr=1e-2, batch_size=4, seq_len=16, outer_blocks=2, checkpoint_every=2)
    checkpoints = Checkpoints(resume, 2, {"params": trainer, "inputs": {}}) if resume else None
    with live_logger(str(out / f"live-{trainer}-{world}")) as live:
        if trainer == "finetune":
            weights = dict(finetune(model, tokenizer, passages, params, live, checkpoints).named_parameters())
        elif trainer == "editable":
            cfg = EditableParams(inner_steps=2, inner_lr=0.1, learn_lr=True, lr_lr=1e-2, cloc=10.0)
            model, lrs = train_editable(model, tokenizer, passages, pairs, params, cfg, EDIT, live, checkpoints)
            weights = {**dict(model.named_parameters()), **{f"lr/{n}": lr.reshape(1) for n, lr in lrs.items()}}
        else:
            mend = train_mend(model, tokenizer, passages, pairs, params, MendParams(edit_lr=1e-2, lr=1e-2, lr_lr=1e-2),
                              EDIT, live, checkpoints)
            weights = dict(mend.named_parameters())
    if distributed.is_main():
        save_file({n: w.detach().contiguous() for n, w in weights.items()}, out / f"{trainer}-{world}.safetensors")


def evaluate(out: Path) -> None:
    """Two FT settings on every training edit (leakage probes drawn, fluency on the first three); rank 0 saves the
    rows every rank gathered."""
    _, world = distributed.rank_and_world()
    passages, pairs, tokenizer, model = data()
    split = SplitForward(model.eval(), edit_parameter_names(model, EDIT))
    from editable_lm.evaluation import Fluency

    fluency = Fluency(("Ada Lovelace wrote", "Alan Turing wrote"), 4)
    rows = evaluate_edits(split, tokenizer, pairs + pairs[:1], strength_grid([0.1, 1.0], [2], lambda lr: lr),
                          reference(split, tokenizer, passages[:3], 16), 16, n_leak_probes=2, seed=5,
                          fluency=fluency, n_fluency_edits=3)
    if distributed.is_main():
        write_json(out / f"rows-{world}.json", rows)


def die(out: Path) -> None:
    """Rank 1 is killed mid-job; rank 0, waiting for its rows, would write `rows.json` after the gather."""
    rank, _ = distributed.rank_and_world()
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    rows = distributed.gather_shards([{"rank": rank}], 2)
    write_json(out / "rows.json", rows)


def gathered_rows(out: Path) -> None:
    rank, world = distributed.rank_and_world()
    rows = [{"item": i, "rank": rank, "square": i * i} for i in distributed.shard(range(7), rank, world)]
    every = distributed.gather_shards(rows, 7)
    if rank == 0:
        (out / f"rows-{world}.json").write_text(json.dumps(every))


if __name__ == "__main__":
    job, out, *args = [arg for i, arg in enumerate(sys.argv[1:]) if "--params" not in sys.argv[i : i + 2]]
    torch.use_deterministic_algorithms(True)
    run_stage(lambda: {"train": train, "evaluate": evaluate, "die": die, "rows": gathered_rows}[job](Path(out), *args))
