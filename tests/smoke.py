"""A git + DVC copy of the project with the smoke params: shared by the end-to-end tests.

`build_smoke_repo` makes the copy; conftest's session fixture `smoke_run` reproduces one copy
once, commits it, and each test module copies that reproduced repository instead of running
`dvc repro` of the smoke configuration again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((ROOT / "tests" / "smoke_params.yaml").read_text())
# A git identity for the commits that git, DVC experiments and GTO make, whatever the machine's git config.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@localhost",
    "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@localhost",
}
ENV = {
    **os.environ,
    **GIT_IDENTITY,
    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    # One torch thread per stage: the smoke models are tiny, and more threads only spin-wait, which
    # doubles a stage's time on 2 cores and more when two experiments run at once.
    "OMP_NUM_THREADS": "1",
}
# What the project ships to a user: code, pipeline, params, DVC config (with the default remote).
PROJECT_FILES = ("dvc.yaml", ".dvcignore", ".gitignore", "stages", "editable_lm", "corpus/README.md", "corpus/.gitignore")


def flat(tree: dict, prefix: str = "") -> dict:
    """A nested dict as {"a.b.c": value}: the key names DVC shows for params and metrics."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def default_sigint() -> None:
    """`preexec_fn` for a child that a test interrupts: Ctrl-C as in a terminal, even when the tests run in
    the background, where the shell starts them with SIGINT ignored (and children inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=ENV if env is None else env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def ran_stages(output: str) -> set[str]:
    """Names of the stages that `dvc repro` or `dvc exp run` ran, from their output."""
    return set(re.findall(r"Running stage '([\w-]+)'", output))


def repro(repo: Path, *args: str, check: bool = True) -> tuple[set[str], subprocess.CompletedProcess]:
    """Run `dvc repro` and return the names of the stages that ran."""
    result = run(["dvc", "repro", *args], repo, check)
    return ran_stages(result.stdout), result


def set_params(repo: Path, **changes: dict) -> None:
    """Merge `{section: {key: value}}` changes into the copy's params.yaml."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in changes.items():
        params.setdefault(section, {}).update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))


def git_commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message], repo)


def build_smoke_repo(repo: Path) -> Path:
    """A new git + DVC repository at `repo` holding the project with the smoke params, committed."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        (repo / name).parent.mkdir(parents=True, exist_ok=True)  # corpus/: its README, not a user's corpora
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / name)
    shutil.rmtree(repo / "editable_lm" / "__pycache__", ignore_errors=True)
    (repo / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    set_params(repo, **SMOKE)
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.name", GIT_IDENTITY["GIT_AUTHOR_NAME"]], repo)
    run(["git", "config", "user.email", GIT_IDENTITY["GIT_AUTHOR_EMAIL"]], repo)
    run(["dvc", "init", "-q"], repo)
    # The project's own DVC config: core settings and the default remote.
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    run(["dvc", "config", "core.analytics", "false"], repo)
    git_commit(repo, "smoke")
    return repo


@dataclass(frozen=True)
class SmokeRun:
    """A smoke repository after one full `dvc repro`, with everything committed."""

    path: Path
    ran: set[str]  # the stages that the one `dvc repro` ran

    def copy(self, dest: Path) -> Path:
        """An independent copy (work tree, git history, DVC cache) at `dest`, which must not exist."""
        shutil.copytree(self.path, dest, symlinks=True, ignore=_ignore_dvc_tmp(self.path))
        return dest


def _ignore_dvc_tmp(root: Path):
    def ignore(directory: str, names: list[str]) -> set[str]:
        return {"tmp"} if Path(directory) == root / ".dvc" else set()

    return ignore


def reproduce_smoke_repo(repo: Path) -> SmokeRun:
    """`dvc repro` the smoke repository and commit the result (dvc.lock and git-tracked metrics)."""
    ran, _ = repro(repo)
    git_commit(repo, "smoke run")
    return SmokeRun(repo, ran)


def override(value) -> str:
    """A value as `dvc exp run -S key=value` writes it (Hydra's override syntax)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(override(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def experiments(repo: Path) -> dict[str, dict]:
    """`dvc exp show --json`: each experiment's name -> its data (params, metrics)."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    return {
        exp["name"]: exp["revs"][0]["data"]
        for baseline in shown
        for exp in (baseline.get("experiments") or [])
        if exp.get("name")
    }


def exp_params(data: dict) -> dict:
    return flat(data["params"]["params.yaml"]["data"])
