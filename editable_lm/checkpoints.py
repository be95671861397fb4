"""Resumable training: every `train.checkpoint_every` steps, the whole training state to a directory.

A checkpoint holds what the next step depends on: the trainable weights, the optimizer state, the
(learned) inner learning rates, the RNG states (torch, and the `random.Random` streams that draw
batches and edits), the step, and the metrics logged so far (replayed into DVCLive on resume).
Tensors go to `state.safetensors`, everything else to `state.json`; nothing is pickled. A
checkpoint is used only if its fingerprint (the params and input files it was made from) matches. Under torchrun
every rank resumes from it and rank 0 alone writes it: the state is the same on every rank, so a checkpoint
resumes on any number of ranks.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from editable_lm import distributed
from editable_lm.storage import atomic_path

FORMAT = 1
TENSORS, STATE = "state.safetensors", "state.json"


@dataclass
class TrainState:
    """The live objects a training loop mutates; a checkpoint saves them and restores them in place."""

    model: nn.Module
    names: list[str]  # the trainable weights (the others are the unchanged input checkpoint's)
    optimizer: torch.optim.Optimizer
    rngs: dict[str, random.Random]
    inner_lr: dict[str, Tensor] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)  # metrics logged per step


def training_checkpoints(directory: str | Path | None, stage: str, train, inputs: list, **configs) -> Checkpoints:
    """Checkpoints of one training stage, fingerprinted by its params (`train` and `configs`) and inputs.

    `train.checkpoint_every` is left out of the fingerprint: changing it keeps a checkpoint usable.
    """
    params = {"stage": stage, "train": train.model_dump(exclude={"checkpoint_every"})}
    params |= {name: config.model_dump() for name, config in configs.items()}
    return Checkpoints(directory, train.checkpoint_every, fingerprint(params, inputs))


def fingerprint(params: dict, inputs: list[str | Path]) -> dict:
    """What a checkpoint must have been made from to be resumed: a hash of the params and of each input."""
    text = json.dumps(params, sort_keys=True)
    return {"params": hashlib.sha256(text.encode()).hexdigest(), "inputs": {str(Path(p)): _hash_path(Path(p)) for p in inputs}}


def _hash_path(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class Checkpoints:
    """Saves a `TrainState` every `every` steps to `directory` and resumes from it; `directory=None` or
    `every=0` disables both."""

    def __init__(self, directory: str | Path | None, every: int, fingerprint: dict):
        self.directory = Path(directory) if directory else None
        self.every = every if directory else 0
        self.fingerprint = fingerprint

    def resume(self, state: TrainState, live=None) -> int:
        """Restore the saved state into `state` (and replay its metrics into `live`); return the step to start at."""
        if not self.every or not (self.directory / STATE).is_file():
            return 0
        try:
            saved, tensors = json.loads((self.directory / STATE).read_text()), load_file(self.directory / TENSORS)
        except (OSError, ValueError, SafetensorError) as exc:
            saved, tensors = {"unreadable": type(exc).__name__}, {}
        why = self._unusable(saved)
        if why:
            print(f"checkpoint {self.directory}: {why}; training starts from step 0")
            return 0
        _restore(state, tensors, saved)
        for metrics in state.history:  # DVC removed the DVCLive files before rerunning the stage
            _log(live, metrics)
        print(f"checkpoint {self.directory}: resuming at step {saved['step']}")
        return saved["step"]

    def _unusable(self, saved: dict) -> str | None:
        """Why the saved checkpoint cannot be resumed, or None if it can."""
        if "unreadable" in saved:
            return f"unreadable ({saved['unreadable']})"
        if saved.get("format") != FORMAT:
            return f"format {saved.get('format')}, expected {FORMAT}"
        old, new = saved["fingerprint"], self.fingerprint
        if old["params"] != new["params"]:
            return "made with other params"
        changed = sorted(set(old["inputs"].items()) ^ set(new["inputs"].items()))
        if changed:
            return f"made from other inputs ({changed[0][0]} differs)"
        return None

    def step_done(self, step: int, state: TrainState, live=None, metrics: dict[str, float] | None = None) -> None:
        """After step `step` (1-based count of steps done): log its metrics, and save if a checkpoint is due."""
        if metrics is not None:
            state.history.append(metrics)
            _log(live, metrics)
        if self.every and step % self.every == 0 and distributed.is_main():
            self._save(step, state)

    def _save(self, step: int, state: TrainState) -> None:
        tensors, saved = _collect(state)
        saved.update(format=FORMAT, step=step, fingerprint=self.fingerprint, history=state.history)
        # Atomic: a kill while saving leaves the previous checkpoint in place.
        with atomic_path(self.directory) as tmp:
            tmp.mkdir()
            save_file(tensors, tmp / TENSORS)
            (tmp / STATE).write_text(json.dumps(saved))

    def clear(self) -> None:
        """Remove the checkpoint once the stage's output is saved: nothing left to resume."""
        if self.directory is not None and distributed.is_main():
            shutil.rmtree(self.directory, ignore_errors=True)


def _log(live, metrics: dict[str, float]) -> None:
    if live is not None:
        for key, value in metrics.items():
            live.log_metric(key, value)
        live.next_step()


def _collect(state: TrainState) -> tuple[dict[str, Tensor], dict]:
    """The state as flat tensors (safetensors) and JSON values."""
    tensors = {f"weights/{n}": state.model.get_parameter(n).detach() for n in state.names}
    tensors |= {f"inner_lr/{n}": lr.detach() for n, lr in state.inner_lr.items()}
    scalars = {}
    for index, values in state.optimizer.state_dict()["state"].items():
        for key, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer/{index}/{key}"] = value
            else:
                scalars[f"{index}/{key}"] = value
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors |= {f"rng/cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    rngs = {name: rng.getstate() for name, rng in state.rngs.items()}
    return tensors, {"optimizer_scalars": scalars, "rngs": rngs}


def _restore(state: TrainState, tensors: dict[str, Tensor], saved: dict) -> None:
    """Copy the saved values into the live objects in place (the optimizer holds references to them)."""
    with torch.no_grad():
        for name in state.names:
            parameter = state.model.get_parameter(name)
            parameter.copy_(tensors[f"weights/{name}"].to(parameter.device))
        for name, lr in state.inner_lr.items():
            lr.copy_(tensors[f"inner_lr/{name}"].to(lr.device))
    optimizer_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            optimizer_state.setdefault(int(index), {})[name] = value
    for key, value in saved["optimizer_scalars"].items():
        index, name = key.split("/", 1)
        optimizer_state.setdefault(int(index), {})[name] = value
    groups = state.optimizer.state_dict()["param_groups"]
    state.optimizer.load_state_dict({"state": optimizer_state, "param_groups": groups})
    torch.set_rng_state(tensors["rng/torch"])
    if torch.cuda.is_available():
        count = sum(k.startswith("rng/cuda/") for k in tensors)
        torch.cuda.set_rng_state_all([tensors[f"rng/cuda/{i}"] for i in range(count)])
    for name, (version, internal, gauss) in saved["rngs"].items():
        state.rngs[name].setstate((version, tuple(internal), gauss))
    state.history[:] = saved["history"]
