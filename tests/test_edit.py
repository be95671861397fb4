"""The `edit` command: one edit given as text, generations before and after, locality figures."""

import subprocess
import sys

import pytest

from editable_lm.edit import edit_prefix
from editable_lm.errors import EditLMError
from editable_lm.models import build_base_model, save_checkpoint
from editable_lm.storage import write_jsonl


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("edit") / "model"
    save_checkpoint(*build_base_model("tiny-random-llama"), path)
    return path


def run_edit(*args, cwd):
    return subprocess.run([sys.executable, "-m", "editable_lm.edit", *args], cwd=cwd, capture_output=True, text=True)


def test_edit_prefix():
    """The new name goes where --replace was, or after the whole sentence."""
    assert edit_prefix("Relativity is by Albert Einstein.", "Albert Einstein") == "Relativity is by"
    assert edit_prefix("Relativity is by ", None) == "Relativity is by"
    with pytest.raises(EditLMError, match="not found"):
        edit_prefix("Relativity is by Albert Einstein.", "Marie Curie")
    with pytest.raises(EditLMError, match="no text before"):
        edit_prefix("Albert Einstein did it.", "Albert Einstein")


def test_edit_prints_generations_and_locality(checkpoint, tmp_path):
    """A strong edit on a tiny model: the report shows the log-prob rising and locality figures."""
    passages = tmp_path / "passages.jsonl"
    write_jsonl(passages, [{"id": i, "article_id": i, "text": f"Passage number {i} is about the history of trains."} for i in range(3)])
    (tmp_path / "params.yaml").write_text("edit:\n  blocks: 2\n")
    result = run_edit(
        "The theory of relativity was developed by Albert Einstein.", "--replace", "Albert Einstein",
        "--name", "Marie Curie", "--model", str(checkpoint), "--passages", str(passages),
        "--lr", "1.0", "--steps", "3", "--prompt", "Relativity is a theory by", "--max-new-tokens", "4",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "edit: 'The theory of relativity was developed by' -> 'Marie Curie'" in out
    before, after = (float(x) for x in out.split("log p(new name): ")[1].split(";")[0].split(" -> "))
    assert after > before
    assert "locality on 3 held-out passages" in out and "top-1 agreement" in out
    assert out.count("before:") == 2 and out.count("after:") == 2


def test_edit_bad_input_is_one_line(checkpoint, tmp_path):
    """A name that is not in the sentence: exit 1, one line naming the problem."""
    result = run_edit("A sentence.", "--replace", "Nobody", "--name", "X Y", "--model", str(checkpoint),
                      "--params", "/nonexistent.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: /nonexistent.yaml: params file not found"]
