"""The `edit` command: one edit given as text, generations before and after, locality figures."""

import json
import re
import subprocess
import sys

import pytest

from editable_lm.edit import choose_lr, edit_prefix, prefix_cut, tuned_lr
from editable_lm.editing import IGNORE, encode_edit
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
    assert "lr 1 (--lr)" in out
    assert "locality on 3 held-out passages" in out and "top-1 agreement" in out
    assert out.count("before:") == 2 and out.count("after:") == 2
    # Each generation carries its fluency; the summary line is the mean over the prompts.
    before_f = [float(x) for x in re.findall(r"before: \[fluency (\d+\.\d\d)\]", out)]
    after_f = [float(x) for x in re.findall(r"after:  \[fluency (\d+\.\d\d)\]", out)]
    assert len(before_f) == len(after_f) == 2
    summary = re.search(r"fluency \(weighted bigram/trigram entropy, mean over 2 prompts\): (\S+) -> (\S+)", out)
    assert summary, out
    assert float(summary[1]) == pytest.approx(sum(before_f) / 2, abs=0.01)
    assert float(summary[2]) == pytest.approx(sum(after_f) / 2, abs=0.01)
    assert "note:" not in out  # the sentence fits in evaluate.seq_len


def test_edit_bad_input_is_one_line(checkpoint, tmp_path):
    """A name that is not in the sentence: exit 1, one line naming the problem."""
    result = run_edit("A sentence.", "--replace", "Nobody", "--name", "X Y", "--model", str(checkpoint),
                      "--params", "/nonexistent.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: /nonexistent.yaml: params file not found"]


def test_tuned_lr_reads_the_models_entry(tmp_path):
    path = tmp_path / "tune.json"
    path.write_text(json.dumps({"n_edits": 30, "editable": {"edit_lr": 0.1, "edit_success": 1.0}, "base": {"edit_lr": 3}}))
    assert tuned_lr(path, "editable") == 0.1
    assert tuned_lr(path, "base") == 3.0
    assert tuned_lr(path, "finetuned") is None  # no entry: the caller falls back
    assert tuned_lr(tmp_path / "missing.json", "editable") is None
    assert choose_lr(None, str(path), "editable", 0.03, "params.yaml") == (0.1, f"tuned for 'editable' on validation edits, {path}")
    assert choose_lr(None, str(path), "finetuned", 0.03, "p.yaml") == (0.03, f"evaluate.edit_lr in p.yaml; no 'finetuned' entry in {path}")
    assert choose_lr(None, "nowhere.json", "editable", 0.03, "p.yaml") == (0.03, "evaluate.edit_lr in p.yaml; no nowhere.json")
    assert choose_lr(0.5, "nowhere.json", "editable", 0.03, "p.yaml") == (0.5, "--lr")


@pytest.mark.parametrize("text", [
    "{not json", "[1, 2]", '{"editable": 0.1}', '{"editable": {}}', '{"editable": {"edit_lr": -0.1}}',
    '{"editable": {"edit_lr": 0}}', '{"editable": {"edit_lr": NaN}}', '{"editable": {"edit_lr": Infinity}}',
    '{"editable": {"edit_lr": "0.1"}}', '{"editable": {"edit_lr": true}}',
])
def test_tuned_lr_bad_file_names_it(tmp_path, text):
    path = tmp_path / "tune.json"
    path.write_text(text)
    with pytest.raises(EditLMError, match=re.escape(str(path))):
        tuned_lr(path, "editable")


def test_prefix_cut_reports_what_encode_edit_keeps(tokenizer):
    prefix, name = "The theory of relativity, which changed physics, was developed by", "Marie Curie"
    n_prefix = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    n_name = len(tokenizer(" " + name, add_special_tokens=False)["input_ids"])
    ids, labels = encode_edit(tokenizer, prefix, name, 8)
    kept = sum(label == IGNORE for label in labels)  # the prefix tokens the edit sees
    assert kept < n_prefix and len(ids) == 8  # the prefix really is cut here
    assert prefix_cut(tokenizer, prefix, name, 8) == (n_prefix + n_name, kept)
    assert prefix_cut(tokenizer, prefix, name, 64) is None


def test_edit_uses_the_tuned_lr_of_the_model(checkpoint, tmp_path):
    """With metrics/tune.json holding an entry named like the --model directory, that lr is used and said so."""
    (tmp_path / "params.yaml").write_text("edit:\n  blocks: 2\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "tune.json").write_text(json.dumps({"editable": {"edit_lr": 0.5}, checkpoint.name: {"edit_lr": 0.25}}))
    result = run_edit("Relativity was developed by Albert Einstein.", "--replace", "Albert Einstein", "--name", "Marie Curie",
                      "--model", str(checkpoint), "--steps", "1", "--max-new-tokens", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"lr 0.25 (tuned for '{checkpoint.name}' on validation edits, metrics/tune.json)" in result.stdout
    assert "(1 step(s), lr 0.25," in result.stdout


def test_edit_falls_back_to_params_and_notes_a_cut_prefix(checkpoint, tmp_path):
    """No tune.json: evaluate.edit_lr, said in one line; a sentence longer than evaluate.seq_len: a note on the cut."""
    (tmp_path / "params.yaml").write_text("evaluate:\n  edit_lr: 0.07\n  seq_len: 8\n")
    sentence = "In 1905, while working at the patent office in Bern, the theory of relativity was developed by Albert Einstein."
    result = run_edit(sentence, "--replace", "Albert Einstein", "--name", "Marie Curie", "--model", str(checkpoint),
                      "--steps", "1", "--max-new-tokens", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "lr 0.07 (evaluate.edit_lr in params.yaml; no metrics/tune.json)" in lines
    notes = [line for line in lines if line.startswith("note:")]
    assert len(notes) == 1 and "more than evaluate.seq_len 8" in notes[0] and "cut from the left" in notes[0], lines
    # a tune.json without this model's label: the same fallback, saying why
    (tmp_path / "other.json").write_text(json.dumps({"editable": {"edit_lr": 0.5}}))
    result = run_edit("Relativity was developed by", "--name", "Marie Curie", "--model", str(checkpoint), "--tuned", "other.json",
                      "--steps", "1", "--max-new-tokens", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"lr 0.07 (evaluate.edit_lr in params.yaml; no '{checkpoint.name}' entry in other.json)" in result.stdout.splitlines()
    assert "note:" not in result.stdout


def test_edit_bad_tune_json_is_one_line(checkpoint, tmp_path):
    """A bad tune.json stops the command before the model loads: exit 1, one line naming the file."""
    (tmp_path / "params.yaml").write_text("edit:\n  blocks: 2\n")
    (tmp_path / "tune.json").write_text(json.dumps({checkpoint.name: {"edit_lr": "fast"}}))
    result = run_edit("Relativity was developed by", "--name", "Marie Curie", "--model", str(checkpoint),
                      "--tuned", "tune.json", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: tune.json: {checkpoint.name}.edit_lr: must be a positive finite number, got 'fast'"]
    (tmp_path / "tune.json").write_text("{truncated")
    result = run_edit("Relativity was developed by", "--name", "Marie Curie", "--model", str(checkpoint),
                      "--tuned", "tune.json", cwd=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: tune.json: not valid JSON (")


def test_edit_with_rome_and_memit(checkpoint, tmp_path):
    """--editor rome/memit: the closed-form edit at the chosen (or --layer) setting, one weight tensor per layer;
    without a chosen setting or --layer, a one-line error."""
    from editable_lm.layer_stats import save_moments, second_moments
    from editable_lm.models import load_checkpoint

    model, tokenizer = load_checkpoint(checkpoint)
    texts = [{"text": f"Passage {i} tells of the river, the town and {i} bridges over the water."} for i in range(40)]
    moments, n = second_moments(model, tokenizer, texts, [0, 1, 2], n_tokens=2000, seq_len=32)
    save_moments(tmp_path / "stats.safetensors", moments, n)
    (tmp_path / "params.yaml").write_text("memit:\n  n_layers: [2]\n  lambdas: [1.0]\nrome:\n  clamp_norm: 100.0\n  weight_decay: 0.0\n")
    common = ("The theory of relativity was developed by Albert Einstein.", "--replace", "Albert Einstein",
              "--name", "Marie Curie", "--model", str(checkpoint), "--stats", str(tmp_path / "stats.safetensors"),
              "--max-new-tokens", "3")
    for editor, tensors in (("rome", 1), ("memit", 2)):
        result = run_edit(*common, "--editor", editor, "--layer", "2", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"({editor}, {tensors} weight tensors)" in result.stdout
        assert f"{editor}: layer 2" in result.stdout and "(--layer)" in result.stdout
        before, after = (float(x) for x in result.stdout.split("log p(new name): ")[1].split(";")[0].split(" -> "))
        assert after > before
    (tmp_path / "old.json").write_text('{"rome": {"setting": {"layer": 2}}}')  # saved before steps were chosen
    result = run_edit(*common, "--editor", "rome", "--editors-details", "old.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rome: layer 2, steps 20 (chosen on validation edits, old.json)" in result.stdout  # the first candidate's
    result = run_edit(*common, "--editor", "rome", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: --editor rome: no setting chosen in metrics/editors_details.json (run `dvc repro editors`), or give --layer"]
    (tmp_path / "details.json").write_text("[1, 2]")
    result = run_edit(*common, "--editor", "rome", "--editors-details", "details.json", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: details.json: expected an object with one entry per editor, got list"]


def test_edit_with_mend(checkpoint, tmp_path):
    """--editor mend: the trained editor of --mend, no setting to choose; its untrained (identity) network is one
    SGD step, so at a large edit lr the new name gets likelier; a missing editor file is a one-line error."""
    from editable_lm.mend import Mend, save_mend
    from editable_lm.models import edit_parameter_names, load_checkpoint
    from editable_lm.params import EditParams
    from editable_lm.split_forward import SplitForward

    model, _ = load_checkpoint(checkpoint)
    (tmp_path / "mend").mkdir()
    save_mend(Mend(SplitForward(model, edit_parameter_names(model, EditParams())), edit_lr=1.0), tmp_path / "mend" / "editor.safetensors")
    (tmp_path / "params.yaml").write_text("edit:\n  blocks: 3\n")
    common = ("The theory of relativity was developed by Albert Einstein.", "--replace", "Albert Einstein",
              "--name", "Marie Curie", "--model", str(checkpoint), "--max-new-tokens", "3", "--editor", "mend")
    result = run_edit(*common, "--mend", "mend", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(mend, 9 weight tensors)" in result.stdout  # gate, up, down of the top 3 blocks
    before, after = (float(x) for x in result.stdout.split("log p(new name): ")[1].split(";")[0].split(" -> "))
    assert after > before
    result = run_edit(*common, "--mend", "nowhere", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: nowhere/editor.safetensors: not a MEND editor file")


def test_edit_with_each_gradient_editor_of_the_list(checkpoint, tmp_path):
    """--editor until_success stops once the edit holds (at most until_success.max_steps); ft_kl needs its
    locality passages (the validation split) and says so in one line without them."""
    (tmp_path / "params.yaml").write_text("edit:\n  blocks: 2\nuntil_success:\n  max_steps: 4\n")
    args = ("Relativity was developed by Albert Einstein.", "--replace", "Albert Einstein", "--name", "Marie Curie",
            "--model", str(checkpoint), "--lr", "0.5", "--max-new-tokens", "2")
    result = run_edit(*args, "--editor", "until_success", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    steps = int(re.search(r"\((\d+) step\(s\), lr 0.5, until_success,", result.stdout).group(1))
    assert 0 <= steps <= 4 and (steps == 4 or "edit success: True" in result.stdout)  # it stops early only once it holds
    result = run_edit(*args, "--editor", "ft_kl", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "error: ft_kl: no locality passages (the validation split's passages: run `dvc repro split`)"
