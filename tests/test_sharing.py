"""Sharing with real DVC: the default local remote, an S3 remote (a real moto server on 127.0.0.1),
a colleague's round trip (clone, pull, nothing to rerun, the same metrics), and fetching one stage,
one path or one named model without running anything.

Every repository here is a copy of the reproduced smoke repository (conftest's `smoke_run`); the
"git server" is a bare repository in the test's temporary directory. HOME points into that
directory too, so the default remote of `.dvc/config` (`~/.cache/editable-lm/dvc-storage`) is
used exactly as committed and still lands inside the test's files.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from smoke import ENV, SmokeRun, flat, git_commit, repro, run

STORAGE = Path(".cache", "editable-lm", "dvc-storage")  # the default remote, under $HOME
ARTIFACTS = {"base-model": "models/base", "finetuned-model": "models/finetuned", "editable-model": "models/editable",
             "mend-editor": "models/mend"}
UP_TO_DATE = "Data and pipelines are up to date."
BUCKET = "editable-lm"
# Credentials of the moto server: any value works there; the tests check where they are kept.
KEY_ID, SECRET = "test-key-id", "test-secret-key-not-in-git"


def files(path: Path) -> dict[str, bytes]:
    """Every file under `path` (or `path` itself) by relative name, with its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def outputs(repo: Path) -> list[str]:
    """Every output path in dvc.lock: what `dvc pull` must bring back (cached) or git carries (not cached)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return sorted(out["path"] for stage in lock["stages"].values() for out in stage.get("outs", []))


def pushed_objects(repo: Path) -> set[str]:
    """The cache objects (`ab/cdef...`) that `dvc push` must send: those of every output DVC caches
    (the git-ignored ones; metrics, plots and other `cache: false` outputs travel with git), and for a
    directory, its `.dir` listing and every file in it."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}
    ignored = set(run(["git", "check-ignore", *outs], repo, check=False).stdout.split())
    assert ignored >= {"models/base", "models/finetuned", "models/editable", "data/split"}
    cache = repo / ".dvc" / "cache" / "files" / "md5"
    objects = set()
    for path in ignored:
        md5 = outs[path]
        objects.add(f"{md5[:2]}/{md5[2:]}")
        if md5.endswith(".dir"):
            objects |= {f"{e['md5'][:2]}/{e['md5'][2:]}" for e in json.loads((cache / md5[:2] / md5[2:]).read_text())}
    return objects


def without_timings(metrics: dict) -> dict:
    """`sec_per_edit` is wall-clock time and differs from run to run; every other metric must not."""
    return {k: v for k, v in metrics.items() if "sec_per_edit" not in k}


def edit_rows(repo: Path) -> list[dict]:
    with (repo / "metrics" / "evaluate_edits.csv").open() as f:
        return [without_timings(row) for row in csv.DictReader(f)]


def user_env(home: Path) -> dict:
    """The environment of a user whose home is `home`: no AWS settings from this machine, no EC2 metadata lookups."""
    env = {k: v for k, v in ENV.items() if not k.startswith("AWS_")}
    return {**env, "HOME": str(home), "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass(frozen=True)
class Shared:
    base: Path
    env: dict
    origin: Path  # where the pipeline ran
    server: Path  # the git server: a bare repository
    pushed: str  # the output of `dvc push`

    @property
    def storage(self) -> Path:
        return Path(self.env["HOME"]) / STORAGE

    def clone(self, name: str) -> Path:
        dest = self.base / name
        run(["git", "clone", "-q", str(self.server), str(dest)], self.base, env=self.env)
        return dest


@pytest.fixture(scope="module")
def shared(tmp_path_factory, smoke_run: SmokeRun) -> Shared:
    """The reproduced smoke repo with its models registered by name, pushed to a git server and to the default remote."""
    base = tmp_path_factory.mktemp("sharing")
    (base / "home").mkdir()
    env = user_env(base / "home")
    origin = smoke_run.copy(base / "origin")
    server = base / "server.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(server)], base, env=env)
    run(["git", "remote", "add", "origin", str(server)], origin, env=env)
    for name in ARTIFACTS:
        run(["gto", "register", name, "--version", "v1.0.0"], origin, env=env)
    run(["git", "push", "-q", "origin", "main", "--tags"], origin, env=env)
    pushed = run(["dvc", "push"], origin, env=env).stdout
    return Shared(base, env, origin, server, pushed)


def test_push_fills_the_default_remote_outside_the_repo(shared):
    # COLUMNS: DVC cuts its table to the terminal's width, and a temporary path can be longer than 80 columns
    listed = run(["dvc", "remote", "list"], shared.origin, env={**shared.env, "COLUMNS": "1000"}).stdout.split()
    assert listed == ["storage", str(shared.storage), "(default)"]
    assert "files pushed" in shared.pushed
    # Every cached output is in the remote, under its content-addressed name, and nothing else.
    stored = {str(p.relative_to(shared.storage / "files" / "md5")) for p in shared.storage.rglob("*") if p.is_file()}
    assert stored == pushed_objects(shared.origin)
    in_sync = run(["dvc", "status", "--cloud"], shared.origin, env=shared.env).stdout
    assert "Cache and remote 'storage' are in sync." in in_sync
    assert "Everything is up to date." in run(["dvc", "push"], shared.origin, env=shared.env).stdout


def test_clone_pull_is_complete_reruns_nothing_and_gives_the_same_metrics(shared):
    colleague = shared.clone("colleague")
    assert not (colleague / "models" / "editable").exists()
    run(["dvc", "pull"], colleague, env=shared.env)
    assert UP_TO_DATE in run(["dvc", "status"], colleague, env=shared.env).stdout
    ran, result = repro(colleague)
    assert ran == set() and UP_TO_DATE in result.stdout
    for path in outputs(shared.origin):
        assert files(colleague / path) == files(shared.origin / path), path

    # The pulled checkpoints load, and evaluating them again gives the same metrics.
    ran, _ = repro(colleague, "--force", "--single-item", "evaluate")
    assert ran == {"evaluate"}
    before = flat(json.loads((shared.origin / "metrics" / "evaluate.json").read_text()))
    after = flat(json.loads((colleague / "metrics" / "evaluate.json").read_text()))
    assert set(after) == set(before)
    assert without_timings(after) == without_timings(before)
    rows_before, rows_after = (edit_rows(repo) for repo in (shared.origin, colleague))
    assert rows_after == rows_before and rows_before


def test_pull_one_stage_or_one_path(shared):
    colleague = shared.clone("one-stage")
    run(["dvc", "pull", "editable"], colleague, env=shared.env)
    assert files(colleague / "models" / "editable") == files(shared.origin / "models" / "editable")
    for other in ("models/base", "models/finetuned", "data/passages.jsonl", "data/split"):
        assert not (colleague / other).exists(), other

    run(["dvc", "pull", "data/split"], colleague, env=shared.env)
    assert files(colleague / "data" / "split") == files(shared.origin / "data" / "split")
    assert not (colleague / "data" / "pairs.jsonl").exists()


def test_get_and_import_one_path_without_running_anything(shared):
    scratch = shared.base / "scratch"
    scratch.mkdir()
    run(["dvc", "get", str(shared.server), "models/editable", "-o", "editable-model"], scratch, env=shared.env)
    assert files(scratch / "editable-model") == files(shared.origin / "models" / "editable")
    run(["dvc", "get", str(shared.server), "data/split", "-o", "split"], scratch, env=shared.env)
    assert files(scratch / "split") == files(shared.origin / "data" / "split")

    # `dvc import` into another DVC project records where the model came from.
    consumer = shared.base / "consumer"
    consumer.mkdir()
    run(["git", "init", "-q", "-b", "main"], consumer, env=shared.env)
    run(["dvc", "init", "-q"], consumer, env=shared.env)
    run(["dvc", "import", str(shared.server), "models/editable", "-o", "editable-model"], consumer, env=shared.env)
    assert files(consumer / "editable-model") == files(shared.origin / "models" / "editable")
    dvcfile = yaml.safe_load((consumer / "editable-model.dvc").read_text())
    head = run(["git", "rev-parse", "HEAD"], shared.origin, env=shared.env).stdout.strip()
    assert dvcfile["deps"][0]["repo"] == {"url": str(shared.server), "rev_lock": head}
    assert dvcfile["deps"][0]["path"] == "models/editable"


def test_models_are_artifacts_listed_and_fetched_by_name(shared):
    declared = yaml.safe_load((shared.origin / "dvc.yaml").read_text())["artifacts"]
    assert {name: a["path"] for name, a in declared.items()} == ARTIFACTS
    assert all(a["type"] == "model" for a in declared.values())

    listed = run(["gto", "show"], shared.clone("registry"), env=shared.env).stdout
    for name in ARTIFACTS:
        assert name in listed and "v1.0.0" in listed

    fetched = shared.base / "fetched"
    fetched.mkdir()
    for name, path in ARTIFACTS.items():
        run(["dvc", "artifacts", "get", str(shared.server), name, "-o", name], fetched, env=shared.env)
        assert files(fetched / name) == files(shared.origin / path), name


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3-compatible server (moto, standalone server mode) on 127.0.0.1, on a free port, with one bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET
    )
    s3.create_bucket(Bucket=BUCKET)
    yield endpoint, s3
    server.stop()


def test_s3_remote_push_clone_pull(smoke_run, s3_endpoint, tmp_path):
    endpoint, s3 = s3_endpoint
    (tmp_path / "home").mkdir()
    env = user_env(tmp_path / "home")  # a fresh home: its default remote is empty, so data can only come from S3
    origin = smoke_run.copy(tmp_path / "origin")
    # The remote's address goes into .dvc/config (committed); the endpoint and credentials into .dvc/config.local.
    run(["dvc", "remote", "add", "s3", f"s3://{BUCKET}/dvc"], origin, env=env)
    run(["dvc", "remote", "modify", "--local", "s3", "endpointurl", endpoint], origin, env=env)
    run(["dvc", "remote", "modify", "--local", "s3", "access_key_id", KEY_ID], origin, env=env)
    run(["dvc", "remote", "modify", "--local", "s3", "secret_access_key", SECRET], origin, env=env)
    assert "files pushed" in run(["dvc", "push", "-r", "s3"], origin, env=env).stdout

    stored = {obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET) for obj in page.get("Contents", [])}
    assert stored == {f"dvc/files/md5/{name}" for name in pushed_objects(origin)}
    in_sync = run(["dvc", "status", "--cloud", "-r", "s3"], origin, env=env).stdout
    assert "Cache and remote 's3' are in sync." in in_sync

    git_commit(origin, "add the s3 remote")
    assert run(["git", "check-ignore", "-q", ".dvc/config.local"], origin, env=env).returncode == 0
    assert SECRET in (origin / ".dvc" / "config.local").read_text()
    assert run(["git", "grep", "-I", "-q", SECRET, "HEAD"], origin, env=env, check=False).returncode == 1
    assert run(["git", "grep", "-I", "-q", endpoint, "HEAD"], origin, env=env, check=False).returncode == 1

    colleague = tmp_path / "colleague"
    run(["git", "clone", "-q", str(origin), str(colleague)], tmp_path, env=env)
    run(["dvc", "remote", "modify", "--local", "s3", "endpointurl", endpoint], colleague, env=env)
    # Without credentials the pull fails; with them in the environment it works.
    no_credentials = run(["dvc", "pull", "-r", "s3"], colleague, env=env, check=False)
    assert no_credentials.returncode != 0 and "Unable to locate credentials" in no_credentials.stderr
    creds = {**env, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
    run(["dvc", "pull", "-r", "s3"], colleague, env=creds)
    assert UP_TO_DATE in run(["dvc", "status"], colleague, env=env).stdout
    for path in outputs(origin):
        assert files(colleague / path) == files(origin / path), path
