"""MEND (Mitchell et al., ICLR 2022): a learned editor that maps an edit's gradient to a weight update.

For a linear layer y = W u (+ b), the gradient of a loss summed over tokens t is dL/dW = sum_t delta_t u_t^T, with
u_t the layer's input and delta_t = dL/dy_t (`factors`). MEND passes each token's [u_t; delta_t] through a small
MLP (`GradientTransform`, one per weight shape, shared by the layers of that shape, each layer with its own scale
and offset inside it) and forms dW = -lr_l sum_t delta~_t u~_t^T with a learned lr per layer (`Mend.update`).

The MLP reads the factors normalised by running means and standard deviations (kept while training). Here its
residual branch is added back in the factors' own units (scaled by the running std), so that at initialisation,
the branch being zero, the update is exactly one SGD step of the edit loss at the initial lr; MEND's code passes
the normalised factors on, whose update at initialisation is not a gradient step.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm
from transformers.pytorch_utils import Conv1D

from editable_lm import distributed
from editable_lm.checkpoints import Checkpoints, TrainState
from editable_lm.editing import kl_divergence, target_loss
from editable_lm.errors import EditLMError
from editable_lm.models import device, edit_parameter_names
from editable_lm.params import EditParams, MendParams, TrainParams
from editable_lm.split_forward import Prepared, SplitForward
from editable_lm.training import encode_edits, encode_passages, outer_step, passage_batches, real_tokens, unrelated_edit

BUILD_KEY = "mend"  # the metadata key of the build (weight names, rank, depth) in an editor file
EDITOR_FILE = "editor.safetensors"


def _owner(split: SplitForward, name: str) -> nn.Module:
    return split.model.get_submodule(name.rsplit(".", 1)[0])


def matrix_names(split: SplitForward) -> list[str]:
    """The edited weights MEND changes: the 2-D weights of linear layers (biases and norms stay)."""
    return [name for name in split.names if name.endswith(".weight") and isinstance(_owner(split, name), (nn.Linear, Conv1D))]


def factors(split: SplitForward, edit: Prepared, params: Mapping[str, Tensor], per_edit: bool = False
            ) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """The edit loss at `params` and, per weight in `params`, its gradient's factors (u [N, in], delta [N, out]) over
    the batch's real tokens: dL/dW = delta^T u (Linear's [out, in] layout; Conv1D's weight is its transpose)."""
    captured: dict[str, tuple[Tensor, Tensor]] = {}

    def hook(name):
        def read(module, args, output):
            captured[name] = (args[0], output)
        return read

    handles = [_owner(split, name).register_forward_hook(hook(name)) for name in params]
    try:
        loss = target_loss(split.target_logits(edit, params), edit.targets, per_edit)
    finally:
        for handle in handles:
            handle.remove()
    names = list(params)
    deltas = torch.autograd.grad(loss, [captured[name][1] for name in names])
    real = edit.batch["attention_mask"].bool().flatten()
    out = {}
    for name, delta in zip(names, deltas):
        u = captured[name][0]
        out[name] = (u.detach().flatten(0, -2)[real], delta.flatten(0, -2)[real])
    return loss.detach(), out


class _Residual(nn.Module):
    """x + relu(scale_l * (A (B x) + b) + offset_l): MEND's low-rank identity-initialised layer (A = 0)."""

    def __init__(self, dim: int, rank: int, n_modes: int):
        super().__init__()
        self.down = nn.Parameter(torch.randn(rank, dim) / dim**0.5)
        self.up = nn.Parameter(torch.zeros(dim, rank))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.scale = nn.Parameter(torch.ones(n_modes, dim))
        self.offset = nn.Parameter(torch.zeros(n_modes, dim))

    def forward(self, x: Tensor, mode: int) -> Tensor:
        pre = (x @ self.down.T) @ self.up.T + self.bias
        # clamp, not relu: its gradient at exactly 0 (every unit at initialisation) is 1, so the branch can grow
        return x + (pre * self.scale[mode] + self.offset[mode]).clamp(min=0)


class GradientTransform(nn.Module):
    """[u; delta] -> [u~; delta~] for one weight shape: running normalisation, `n_layers` low-rank residual layers."""

    def __init__(self, in_dim: int, out_dim: int, n_modes: int, rank: int = 32, n_layers: int = 2):
        super().__init__()
        dim = in_dim + out_dim
        self.in_dim = in_dim
        self.layers = nn.ModuleList(_Residual(dim, min(rank, dim), n_modes) for _ in range(n_layers))
        # Parameters without a gradient rather than buffers: a training checkpoint saves parameters
        self.count = nn.Parameter(torch.zeros((), dtype=torch.float64), requires_grad=False)
        self.mean = nn.Parameter(torch.zeros(dim, dtype=torch.float64), requires_grad=False)
        self.m2 = nn.Parameter(torch.zeros(dim, dtype=torch.float64), requires_grad=False)

    @torch.no_grad()
    def observe(self, z: Tensor) -> None:
        """Add rows [N, in + out] to the running mean and variance (Chan et al.'s parallel update)."""
        n = z.shape[0]
        if n == 0:
            return
        mean = z.double().mean(0)
        total = self.count + n
        gap = mean - self.mean
        self.m2 += ((z.double() - mean) ** 2).sum(0) + gap**2 * self.count * n / total
        self.mean += gap * n / total
        self.count.copy_(total)

    def std(self) -> Tensor:
        if self.count < 2:
            return torch.ones_like(self.mean)
        return (self.m2 / (self.count - 1)).sqrt().clamp(min=1e-8)

    def forward(self, u: Tensor, delta: Tensor, mode: int) -> tuple[Tensor, Tensor]:
        z = torch.cat([u, delta], -1)
        if self.training:
            self.observe(z)
        mean, std = self.mean.to(z.dtype), self.std().to(z.dtype)
        x = (z - mean) / std
        h = x
        for layer in self.layers:
            h = layer(h, mode)
        out = z + std * (h - x)  # the branch's change, back in the factors' units: z itself at initialisation
        return out[:, : self.in_dim], out[:, self.in_dim :]


class Mend(nn.Module):
    """A MEND editor for the weights `names` of a split model: a transform per weight shape, an lr per weight."""

    def __init__(self, split: SplitForward, edit_lr: float, rank: int = 32, n_layers: int = 2):
        super().__init__()
        self.rank, self.n_layers = rank, n_layers
        self.names = matrix_names(split)
        shapes = {name: self._shape(split, name) for name in self.names}
        groups: dict[tuple[int, int], list[str]] = {}
        for name, shape in shapes.items():
            groups.setdefault(shape, []).append(name)
        self.key = {name: f"{shape[0]}x{shape[1]}" for name, shape in shapes.items()}
        self.mode = {name: group.index(name) for group in groups.values() for name in group}
        self.transforms = nn.ModuleDict({f"{s[0]}x{s[1]}": GradientTransform(*s, len(g), rank, n_layers)
                                         for s, g in groups.items()})
        self.lrs = nn.Parameter(torch.full((len(self.names),), float(edit_lr)))
        self.conv = {name: isinstance(_owner(split, name), Conv1D) for name in self.names}

    @staticmethod
    def _shape(split: SplitForward, name: str) -> tuple[int, int]:
        """(in, out) of the layer owning `name`."""
        weight = split.model.get_parameter(name)
        return tuple(weight.shape) if isinstance(_owner(split, name), Conv1D) else (weight.shape[1], weight.shape[0])

    def update(self, split: SplitForward, edit: Prepared, params: Mapping[str, Tensor] | None = None,
               per_edit: bool = False) -> dict[str, Tensor]:
        """The edited weights: W - lr_l delta~^T u~ per weight, from the unedited `params` (default: the model's).
        Differentiable in the editor's parameters, not through the model's gradient (MEND's inputs are constants)."""
        start = {name: split.model.get_parameter(name) for name in self.names} if params is None else dict(params)
        grad_params = {name: value.detach().requires_grad_(True) for name, value in start.items()}
        with torch.enable_grad():
            _, parts = factors(split, edit, grad_params, per_edit)
            new = {}
            for index, name in enumerate(self.names):
                u, delta = parts[name]
                u, delta = self.transforms[self.key[name]](u, delta, self.mode[name])
                step = delta.T @ u  # [out, in]
                new[name] = start[name] - self.lrs[index] * (step.T if self.conv[name] else step)
        return new


def mend_losses(split: SplitForward, mend: Mend, passages: Prepared, edit: Prepared, target: Prepared,
                cfg: MendParams) -> dict[str, Tensor]:
    """MEND's training loss for one edit: the editor's update from `edit`'s gradient; then cedit x the edit loss
    on `target` (the edit and one of its probes) and cloc x KL(pre || post) on the unrelated passages (under
    torchrun, this rank's share of them: each loss is this rank's part of the global one)."""
    with torch.no_grad():
        pre = split.logits(passages)
    new = mend.update(split, edit)
    post, target_logits = split.logits_many([(passages, new, None), (target, new, target.targets.where)])
    edit_loss = distributed.replicated_share(target_loss(target_logits, target.targets))
    locality = distributed.mean_share(kl_divergence(pre, post, passages.batch["attention_mask"]), real_tokens(passages.batch))
    return {"total": cfg.cedit * edit_loss + cfg.cloc * locality, "edit": edit_loss, "locality": locality}


def train_mend(model: nn.Module, tokenizer, passages: list[dict], pairs: list[dict], train: TrainParams,
               cfg: MendParams, edit: EditParams, live=None, checkpoints: Checkpoints | None = None) -> Mend:
    """Train a MEND editor for `model`'s edit weights on the editable model's budget: `train.steps` steps over the
    same seeded passage batches and edits as `train_editable`, the model itself frozen."""
    torch.manual_seed(train.seed)
    model.to(device()).eval().requires_grad_(False)
    split = SplitForward(model, edit_parameter_names(model, edit))
    mend = Mend(split, cfg.edit_lr, cfg.rank, cfg.n_layers).to(device()).train()
    if next(model.parameters()).dtype == torch.float64:  # an oracle run (tests): the network in float64 too
        mend.double()  # (its running statistics are float64 already)
    network = [p for n, p in mend.named_parameters() if p.requires_grad and n != "lrs"]
    optimizer = torch.optim.Adam([{"params": network, "lr": cfg.lr}, {"params": [mend.lrs], "lr": cfg.lr_lr}])
    # The passage and edit streams are train_editable's; the probe an edit is scored on has its own.
    rngs = {"batches": random.Random(train.seed), "edits": random.Random(train.seed + 1),
            "probes": random.Random(train.seed + 2)}
    checkpoints = checkpoints or Checkpoints(None, 0, {})
    state = TrainState(mend, [name for name, _ in mend.named_parameters()], optimizer, rngs)
    start = checkpoints.resume(state, live)
    batches = passage_batches(passages, tokenizer, train, rngs["batches"], start)
    for step, batch_passages in enumerate(tqdm(batches, initial=start, total=train.steps, desc="mend"), start + 1):
        pair = unrelated_edit(pairs, batch_passages, rngs["edits"])
        scored = [pair] + ([rngs["probes"].choice(pair["probes"])] if pair.get("probes") else [])
        mine = distributed.my_share(batch_passages, "train.batch_size passages")
        prepared = split.prepare_many([encode_passages(mine, tokenizer, train.seq_len),
                                       encode_edits([pair], tokenizer, train.seq_len),
                                       encode_edits(scored, tokenizer, train.seq_len)])
        losses = mend_losses(split, mend, *prepared, cfg)
        outer_step(optimizer, losses["total"])
        with torch.no_grad():
            mend.lrs.clamp_(min=0.0)  # a negative learning rate would undo edits
        checkpoints.step_done(step, state, live, {f"train/loss_{key}": distributed.total(value).item()
                                                  for key, value in losses.items()})
    return mend.eval()


def save_mend(mend: Mend, path: str | Path) -> None:
    """The editor's weights and running statistics, with what it was built with as the file's metadata."""
    tensors = {name: value.detach().cpu().contiguous() for name, value in mend.state_dict().items()}
    # One metadata key: safetensors writes its metadata map in hash order, which changes from run to run, and the
    # file's bytes (and so its DVC hash) with it; one sorted JSON string keeps them fixed.
    build = json.dumps({"names": mend.names, "rank": mend.rank, "n_layers": mend.n_layers}, sort_keys=True)
    save_file(tensors, Path(path), metadata={BUILD_KEY: build})


def load_mend(split: SplitForward, path: str | Path) -> Mend:
    """The editor saved at `path`, for the split model it was trained for (a clear error if it is not that one)."""
    path = Path(path)
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(path)
    except (OSError, SafetensorError) as exc:
        raise EditLMError(f"{path}: not a MEND editor file ({exc}); run `dvc repro mend`") from exc
    if BUILD_KEY not in meta:
        raise EditLMError(f"{path}: no MEND build in its metadata (an older or other file); run `dvc repro mend`")
    build = json.loads(meta[BUILD_KEY])
    names = build["names"]
    if names != matrix_names(split):
        raise EditLMError(f"{path}: trained for weights {names[:2]}..., this model edits {matrix_names(split)[:2]}...; "
                          "rerun `dvc repro mend` with this model and edit params")
    mend = Mend(split, 0.0, build["rank"], build["n_layers"])
    mend.load_state_dict(tensors, assign=True)  # the saved dtypes (float64 statistics) stay
    return mend.to(device()).eval()
