"""Resumable training: a stage killed after a checkpoint, rerun, ends with the uninterrupted run's weights (the
model's, or MEND's editor network with its running statistics).

The real stage scripts run in subprocesses on a tiny random GPT-2 (its dropout draws on torch's RNG);
the kill is a real SIGKILL, sent as soon as the first checkpoint is on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from editable_lm.models import build_base_model, save_checkpoint
from editable_lm.storage import write_jsonl
from smoke import default_sigint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STEPS, EVERY = 100, 5  # long enough after the first checkpoint for a signal to land mid-run (~10 s a run)
SETTINGS = {
    "edit": {"blocks": 2},
    # a warm-up and a decay (set from the step, so a resumed run must land on the same rates)
    "train": {"steps": STEPS, "seq_len": 16, "batch_size": 2, "outer_blocks": 2, "checkpoint_every": EVERY, "lr": 1e-3,
              "warmup_steps": 10, "decay": "cosine"},
    # every lever on: the probe and neighbour streams and the reference model are restored or reloaded too
    "editable": {"learn_lr": True, "lr_lr": 1e-2, "loc_reference": "finetuned", "cgen": 1.0, "cneigh": 1.0},
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A tiny base checkpoint, training passages and edit pairs, and params for a short run.

    Built once per module (the tokenizer is slow to read) and never written to: each test works on its own copy.
    """
    inputs = tmp_path_factory.mktemp("ckpt-inputs")
    save_checkpoint(*build_base_model("tiny-random-gpt2"), inputs / "base")
    names = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Emmy Noether", "Marie Curie", "Niels Bohr"]
    write_jsonl(inputs / "split" / "passages_train.jsonl", [
        {"id": i, "article_id": i % 6, "text": f"{names[i % 6]} wrote paper number {i} about engines and numbers."}
        for i in range(24)
    ])
    write_jsonl(inputs / "split" / "pairs_train.jsonl", [
        {"id": i, "article_id": i, "prefix": f"Paper {i} was written by", "name": names[i], "new_name": names[(i + 1) % 6],
         "probes": [{"prefix": f"Paper {i} is by", "name": names[i], "new_name": names[(i + 1) % 6]}]}
        for i in range(6)
    ])
    write_params(inputs / "params.yaml", SETTINGS)
    return inputs


@pytest.fixture
def work(inputs, tmp_path) -> Path:
    """This test's own working directory: a fresh copy of the inputs, nothing else."""
    return Path(shutil.copytree(inputs, tmp_path / "work"))


@pytest.fixture(scope="module")
def straight(inputs, tmp_path_factory):
    """`straight(stage)`: the directory of an uninterrupted run of `stage` on the inputs (outputs `<stage>` and
    `<stage>-live`), run the first time a test asks for it and only read afterwards."""
    runs = tmp_path_factory.mktemp("ckpt-straight")
    shutil.copytree(inputs, runs, dirs_exist_ok=True)
    done = set()

    def get(stage: str) -> Path:
        if stage not in done:
            run_stage(runs, stage, stage, None)
            done.add(stage)
        return runs

    return get


def write_params(path: Path, changes: dict) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in changes.items():
        params[section] = {**params[section], **values}
    path.write_text(yaml.safe_dump(params))


def stage_cmd(work: Path, stage: str, out: str, resume: str | None, params: str = "params.yaml") -> list[str]:
    cmd = [sys.executable, str(ROOT / "stages" / f"{stage}.py"), "--params", str(work / params),
           "--base", str(work / "base"), "--split", str(work / "split"), "--out", str(work / out),
           "--live", str(work / f"{out}-live")]
    if stage in ("mend", "editable"):  # mend.model base: unread; editable.loc_reference finetuned: the base stands in
        cmd += ["--finetuned", str(work / "base")]
    return cmd + (["--resume-dir", str(work / resume)] if resume else [])


def run_stage(work: Path, *args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(stage_cmd(work, *args, **kwargs), env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def kill_after_first_checkpoint(work: Path, stage: str, out: str, resume: str, sig=signal.SIGKILL, **kwargs):
    """Start the stage, send `sig` once a checkpoint exists; return (process, the checkpoint's step)."""
    process = subprocess.Popen(stage_cmd(work, stage, out, resume, **kwargs), env=ENV, preexec_fn=default_sigint,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = work / resume / "state.json"
    while not state.is_file() and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(sig)
    process.wait(timeout=120)
    assert process.returncode != 0, "the stage finished before it could be interrupted"
    return process, json.loads(state.read_text())["step"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor a stage output holds (a model's weights, an editor network's)."""
    return {f"{file.name}/{name}": value for file in sorted(path.glob("*.safetensors")) for name, value in load_file(file).items()}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [name for name in wa if not torch.equal(wa[name], wb[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def logged_losses(live: Path) -> dict[str, list[str]]:
    """The DVCLive curves as (step, value) columns, without the timestamps."""
    files = sorted((live / "plots" / "metrics").rglob("*.tsv"))
    return {f.name: [line.split("\t", 1)[1] for line in f.read_text().splitlines()] for f in files}


@pytest.mark.parametrize("stage", ["finetune", "editable", "mend"])
def test_killed_run_resumes_to_identical_weights(work, straight, stage):
    """Kill after a checkpoint, rerun: same final weights (bit for bit), same curves, checkpoint removed."""
    reference = straight(stage)
    _, step = kill_after_first_checkpoint(work, stage, f"{stage}-resumed", f"ckpt-{stage}")
    assert 0 < step < STEPS and step % EVERY == 0
    assert not (work / f"{stage}-resumed").exists()  # outputs are written only at the end

    result = run_stage(work, stage, f"{stage}-resumed", f"ckpt-{stage}")
    assert f"resuming at step {step}" in result.stdout
    assert_same_weights(reference / stage, work / f"{stage}-resumed")
    assert logged_losses(work / f"{stage}-resumed-live") == logged_losses(reference / f"{stage}-live")
    assert len(next(iter(logged_losses(reference / f"{stage}-live").values()))) == 1 + STEPS
    if stage == "editable":  # the learned inner learning rates were restored too
        scales = [load_file(path / "inner_lr_scale.safetensors") for path in (reference / stage, work / f"{stage}-resumed")]
        assert scales[0].keys() == scales[1].keys() and scales[0]
        assert all(torch.equal(scales[0][k], scales[1][k]) for k in scales[0])
    assert not (work / f"ckpt-{stage}").exists()


def test_checkpoint_from_other_params_or_inputs_is_not_used(work, straight):
    """A checkpoint made with other params, or unreadable: start fresh, say why, and end on the weights of an
    uninterrupted run."""
    kill_after_first_checkpoint(work, "finetune", "ft-other", "ckpt-other")
    write_params(work / "other.yaml", {**SETTINGS, "train": {**SETTINGS["train"], "lr": 2e-3}})
    result = run_stage(work, "finetune", "ft-other", "ckpt-other", params="other.yaml")
    assert "made with other params; training starts from step 0" in result.stdout
    assert not (work / "ckpt-other").exists()

    kill_after_first_checkpoint(work, "finetune", "ft-other", "ckpt-other")
    state = work / "ckpt-other" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    result = run_stage(work, "finetune", "ft-other", "ckpt-other")
    assert "unreadable (SafetensorError); training starts from step 0" in result.stdout
    assert_same_weights(work / "ft-other", straight("finetune") / "finetune")  # a fresh start, not the corrupt state


def test_checkpoint_every_zero_writes_nothing(work):
    write_params(work / "none.yaml", {**SETTINGS, "train": {**SETTINGS["train"], "checkpoint_every": 0, "steps": 3, "warmup_steps": 1}})
    process = subprocess.Popen(stage_cmd(work, "finetune", "ft-none", "ckpt-none", params="none.yaml"), env=ENV)
    assert process.wait(timeout=120) == 0
    assert not (work / "ckpt-none").exists()


def test_ctrl_c_keeps_the_checkpoint(work):
    """Ctrl-C (SIGINT): one line, exit 130, no output written, and the checkpoint stays for the rerun."""
    process, step = kill_after_first_checkpoint(work, "finetune", "ft-int", "ckpt-int", sig=signal.SIGINT)
    stderr = process.stderr.read()
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "interrupted" and "Traceback" not in stderr
    assert (work / "ckpt-int" / "state.json").is_file() and not (work / "ft-int").exists()
