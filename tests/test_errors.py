"""Every bad input: one line on stderr naming the file or key, a non-zero exit, no traceback, earlier outputs intact.

`CASES` is the table (one row per bad input, as in the README's "What happens when"); each row runs
the real stage script or edit command in a subprocess. The DVC tests at the end run `dvc repro` on a
copy of the reproduced smoke repository.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from editable_lm.models import build_base_model, save_checkpoint
from editable_lm.storage import write_jsonl
from smoke import SmokeRun, default_sigint, repro, set_params

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
EARLIER = "an earlier output\n"
SPLIT = ("--passages", "{w}/passages.jsonl", "--pairs", "{w}/pairs.jsonl", "--out", "{w}/out")
TRAIN = ("--base", "{w}/base", "--split", "{w}/split", "--out", "{w}/out", "--live", "{w}/live")
EDIT = ("A theory by Albert Einstein.", "--replace", "Albert Einstein", "--params", "{w}/params.yaml")


@dataclass(frozen=True)
class Case:
    """A bad input: the command (`stage` script or the `edit` command) and the one line it must print."""

    stage: str  # stages/<stage>.py, or "edit" for `python -m editable_lm.edit`
    args: tuple[str, ...]  # "{w}" is the work directory
    message: str  # regex the single stderr line must match
    code: int = 1
    python: tuple[str, ...] = ()  # interpreter options: -S hides the installed packages (no .venv)
    sigint_when: str = ""  # send SIGINT once this file exists (Ctrl-C during a long stage)


CASES = {
    "empty params.yaml": Case("check_params", ("--params", "{w}/empty.yaml", "--out", "{w}/out"),
                              r"error: .*/empty.yaml: empty params file$"),
    "empty section": Case("check_params", ("--params", "{w}/empty_section.yaml", "--out", "{w}/out"),
                          r"error: train: empty section \(list its keys, as in the committed params.yaml\)$"),
    "missing section": Case("check_params", ("--params", "{w}/missing_section.yaml", "--out", "{w}/out"),
                            r"error: train: section missing from .*/missing_section.yaml \(every section is required\)$"),
    "duplicate key": Case("check_params", ("--params", "{w}/duplicate.yaml", "--out", "{w}/out"),
                          r"error: .*/duplicate.yaml:\d+: train.lr: duplicate key \(first given on line \d+\)$"),
    "invalid YAML, stage --params": Case("finetune", ("--params", "{w}/invalid.yaml", *TRAIN),
                                         r"error: .*/invalid.yaml:3:8: invalid YAML: mapping values are not allowed here$"),
    "invalid YAML, edit --params": Case("edit", (*EDIT[:3], "--name", "Marie Curie", "--model", "{w}/base",
                                                 "--params", "{w}/invalid.yaml"), r"error: .*/invalid.yaml:3:8: invalid YAML"),
    "truncated model.safetensors, stage": Case(
        "finetune", ("--params", "{w}/params.yaml", *TRAIN[:1], "{w}/truncated", *TRAIN[2:]),
        r"error: .*/truncated/model.safetensors: incomplete or corrupted checkpoint \(.*\); restore it with `dvc checkout "),
    "truncated model.safetensors, edit": Case(
        "edit", (*EDIT, "--name", "Marie Curie", "--model", "{w}/truncated"),
        r"error: .*/truncated/model.safetensors: incomplete or corrupted checkpoint"),
    "checkpoint without tokenizer files": Case(
        "editable", ("--params", "{w}/params.yaml", *TRAIN[:1], "{w}/no_tokenizer", "--finetuned", "{w}/base", *TRAIN[2:]),
        r"error: .*/no_tokenizer: incomplete checkpoint, no tokenizer files"),
    "edit --name empty": Case("edit", (*EDIT, "--name", "", "--model", "{w}/base"), r"error: --name: must not be empty$"),
    "edit --name spaces": Case("edit", (*EDIT, "--name", "   ", "--model", "{w}/base"), r"error: --name: must not be empty$"),
    "edit --lr nan": Case("edit", (*EDIT, "--name", "X Y", "--lr", "nan", "--model", "{w}/base"),
                          r"error: --lr: must be a finite number >= 0, got nan$"),
    "edit --lr inf": Case("edit", (*EDIT, "--name", "X Y", "--lr", "inf", "--model", "{w}/base"),
                          r"error: --lr: must be a finite number >= 0, got inf$"),
    "stage outside the virtual environment": Case(
        "finetune", ("--params", "{w}/params.yaml", *TRAIN), python=("-S",),
        message=r"error: editable_lm is not installed for this python; .*source .venv/bin/activate$"),
    "Ctrl-C during training": Case(
        "finetune", ("--params", "{w}/long.yaml", *TRAIN, "--resume-dir", "{w}/ckpt"), r"interrupted$",
        code=130, sigint_when="{w}/ckpt/state.json"),
    "split leaves a part without edits": Case(
        "split", ("--params", "{w}/params.yaml", "--pairs", "{w}/one_pair.jsonl", *SPLIT[:2], *SPLIT[4:]),
        r"error: split: the (train|val|test) split has no edit pairs \(1 in the whole corpus\): .*data.max_articles"),
    "corpus too small for a sample": Case(
        "split", ("--params", "{w}/many_edits.yaml", *SPLIT),
        r"error: reliability.n_edits: 1000 edit pairs wanted but the test split has \d+; "
        r"lower reliability.n_edits to at most \d+"),
}


def write_params(path: Path, changes: dict, drop: str = "") -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in changes.items():
        params[section] = {**params[section], **values} if values is not None else None
    params.pop(drop, None)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny checkpoint and two broken copies, a small corpus split, and params files good and bad."""
    work = tmp_path_factory.mktemp("errors")
    save_checkpoint(*build_base_model("tiny-random-llama"), work / "base")
    for broken in ("truncated", "no_tokenizer"):
        subprocess.run(["cp", "-r", str(work / "base"), str(work / broken)], check=True)
    weights = work / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for file in (work / "no_tokenizer").glob("tokenizer*"):
        file.unlink()

    passages = [{"id": i, "article_id": i // 2, "text": f"Passage {i} tells of engines, rivers and numbers."}
                for i in range(80)]
    pairs = [{"id": i, "article_id": i, "prefix": f"Paper {i} was written by", "new_name": "Ada Lovelace"}
             for i in range(40)]
    write_jsonl(work / "passages.jsonl", passages)
    write_jsonl(work / "pairs.jsonl", pairs)
    write_jsonl(work / "one_pair.jsonl", pairs[:1])
    write_jsonl(work / "split" / "passages_train.jsonl", passages)
    write_jsonl(work / "split" / "pairs_train.jsonl", pairs)

    small = {"train": {"steps": 3, "seq_len": 16, "outer_blocks": 2}, "edit": {"blocks": 2},
             "reliability": {"n_edits": 2}, "sweep": {"n_edits": 2}, "sequential": {"n_edits": 2},
             "evaluate": {"n_ppl_passages": 2}, "ft_kl": {"n_loc_passages": 1}}
    write_params(work / "params.yaml", small)
    write_params(work / "long.yaml", {**small, "train": {**small["train"], "steps": 100000, "checkpoint_every": 1}})
    write_params(work / "many_edits.yaml", {**small, "reliability": {"n_edits": 1000}})
    write_params(work / "empty_section.yaml", {"train": None})
    write_params(work / "missing_section.yaml", {}, drop="train")
    (work / "empty.yaml").write_text("# nothing here\n")
    (work / "duplicate.yaml").write_text((ROOT / "params.yaml").read_text().replace("\n  lr: ", "\n  lr: 1.0\n  lr: ", 1))
    (work / "invalid.yaml").write_text("train:\n lr: 1\n  steps: 2\n")
    return work


def command(case: Case, work: Path) -> list[str]:
    script = ["-m", "editable_lm.edit"] if case.stage == "edit" else [str(ROOT / "stages" / f"{case.stage}.py")]
    return [sys.executable, *case.python, *script, *(arg.format(w=work) for arg in case.args)]


def run_case(case: Case, work: Path) -> tuple[int, str]:
    process = subprocess.Popen(command(case, work), cwd=work, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    if case.sigint_when:
        trigger = Path(case.sigint_when.format(w=work))
        while not trigger.is_file() and process.poll() is None:
            time.sleep(0.005)
        process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line(work, name):
    case = CASES[name]
    out = work / "out"
    if out.is_dir():
        subprocess.run(["rm", "-r", str(out)], check=True)
    out.write_text(EARLIER)  # what an earlier run left at the output path

    code, stderr = run_case(case, work)

    assert code == case.code, stderr[-2000:]
    assert "Traceback" not in stderr
    # Progress bars (tqdm) end in carriage returns; the last line is the message, and the only one.
    lines = [line.rsplit("\r", 1)[-1] for line in stderr.strip().splitlines()]
    assert len([line for line in lines if line.strip()]) == 1 or case.sigint_when, stderr
    assert re.match(case.message, lines[-1]), lines[-1]
    assert out.read_text() == EARLIER


# --- through DVC, on a copy of the reproduced smoke repository ---------------------------------


@pytest.fixture
def repo(tmp_path, smoke_run: SmokeRun) -> Path:
    return smoke_run.copy(tmp_path / "editable-lm")


def trained(repo: Path) -> dict[str, bytes]:
    return {m: (repo / "models" / m / "model.safetensors").read_bytes() for m in ("finetuned", "editable")}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "error: params.yaml: empty params file"),
        ("DROP train", "error: train: section missing from params.yaml"),
        ("EMPTY train", "error: train: empty section"),
        ("DUPLICATE", 'found duplicate key "lr"'),  # DVC reads params.yaml first (ruamel.yaml) and refuses it
    ],
)
def test_bad_params_yaml_fails_before_any_stage_runs(repo, text, expected):
    """Through `dvc repro`: an empty file, a missing or empty section, a duplicate key fail, and nothing is deleted."""
    params = repo / "params.yaml"
    good = params.read_text()
    if text.startswith("DROP") or text.startswith("EMPTY"):
        data = yaml.safe_load(good)
        data.pop("train") if text.startswith("DROP") else data.update(train=None)
        text = yaml.safe_dump(data)
    elif text == "DUPLICATE":
        text = good.replace("  lr: ", "  lr: 0.5\n  lr: ", 1)
    params.write_text(text)
    lock, models, passages = (repo / "dvc.lock").read_text(), trained(repo), (repo / "data" / "passages.jsonl").read_bytes()

    ran, result = repro(repo, check=False)

    assert result.returncode != 0
    assert expected in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert ran <= {"check_params"}
    assert trained(repo) == models and (repo / "data" / "passages.jsonl").read_bytes() == passages
    assert (repo / "dvc.lock").read_text() == lock


def test_too_small_corpus_fails_in_split_before_training(repo):
    """A sample larger than its split fails in `split` with the numbers; the trained models stay."""
    models = trained(repo)
    set_params(repo, reliability={"n_edits": 100000})
    ran, result = repro(repo, check=False)
    assert result.returncode != 0
    assert "reliability.n_edits: 100000 edit pairs wanted but the test split has" in result.stdout + result.stderr
    assert "finetune" not in ran and "editable" not in ran
    assert trained(repo) == models


def test_evaluation_sample_size_reruns_split_but_not_training(repo):
    """split reads the sample sizes (to check them); its outputs do not change, so training does not rerun."""
    models = trained(repo)
    set_params(repo, reliability={"n_edits": 2})
    ran, _ = repro(repo)
    assert ran == {"check_params", "split", "evaluate", "editors", "report"}
    assert trained(repo) == models
