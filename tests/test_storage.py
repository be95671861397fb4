"""Atomic outputs and JSONL inputs."""

from __future__ import annotations

import os
import signal

import pytest

from editable_lm.errors import EditLMError
from editable_lm.storage import atomic_path, read_jsonl, write_json, write_jsonl


class Boom(Exception):
    pass


def test_atomic_file_kept_on_error(tmp_path):
    """A failing block leaves the old file as it was, and no temporary behind."""
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(Boom):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise Boom
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_file_replaced_on_success(tmp_path):
    """A successful block replaces the file; the temporary is a sibling, not the target."""
    path = tmp_path / "sub" / "out.txt"
    with atomic_path(path) as tmp:
        assert tmp != path and tmp.name == path.name
        tmp.write_text("first")
        assert not path.exists()
    with atomic_path(path) as tmp:
        tmp.write_text("second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["out.txt"]


def test_atomic_dir_kept_on_error_and_replaced_on_success(tmp_path):
    """Directories too: kept whole on error, replaced whole (old files gone) on success."""
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "a").write_text("old")
    with pytest.raises(Boom):
        with atomic_path(path) as tmp:
            tmp.mkdir()
            (tmp / "b").write_text("half")
            raise Boom
    assert [p.name for p in path.iterdir()] == ["a"]
    with atomic_path(path) as tmp:
        tmp.mkdir()
        (tmp / "b").write_text("new")
    assert [p.name for p in path.iterdir()] == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_jsonl_round_trip(tmp_path):
    """write_jsonl + read_jsonl give the rows back, unicode included."""
    rows = [{"id": 0, "name": "Marie Curie"}, {"id": 1, "name": "Niels Bohr", "x": [1.5, None]}, {"id": 2, "name": "Erwin Schrödinger"}]
    path = tmp_path / "pairs.jsonl"
    assert write_jsonl(path, iter(rows)) == 3
    assert read_jsonl(path) == rows
    assert "Schrödinger" in path.read_text(encoding="utf-8")


def test_write_jsonl_failure_keeps_old_file(tmp_path):
    """A generator that fails midway leaves the previous JSONL intact."""
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, [{"id": 0}])

    def rows():
        yield {"id": 1}
        raise Boom

    with pytest.raises(Boom):
        write_jsonl(path, rows())
    assert read_jsonl(path) == [{"id": 0}]


def test_read_jsonl_missing(tmp_path):
    """A missing input names its path."""
    path = tmp_path / "nope.jsonl"
    with pytest.raises(EditLMError, match="nope.jsonl") as info:
        read_jsonl(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_read_jsonl_empty(tmp_path, text):
    """An empty (or blank) input is an error naming its path."""
    path = tmp_path / "empty.jsonl"
    path.write_text(text)
    with pytest.raises(EditLMError, match="empty") as info:
        read_jsonl(path)
    assert str(path) in str(info.value)


def test_write_json(tmp_path):
    """write_json writes pretty JSON ending in a newline."""
    path = tmp_path / "m.json"
    write_json(path, {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}\n'


def test_interrupt_during_the_swap_waits_until_it_is_done(tmp_path, monkeypatch):
    """Ctrl-C while the old output is being replaced lands after the new one is in place, never between."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    real_replace = os.replace

    def replace_after_a_signal(src, dst):
        os.kill(os.getpid(), signal.SIGINT)  # the old output is gone already: the worst moment
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_after_a_signal)
    # Ctrl-C as in a terminal: a shell starts background jobs (pytest too) with SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with atomic_path(target) as tmp:
                tmp.mkdir()
                (tmp / "new.txt").write_text("new")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
