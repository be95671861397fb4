"""CounterFact and zsRE files read into the pipeline's pairs, with one-line errors for bad records."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from editable_lm.errors import EditLMError
from editable_lm.formats import check_lengths, read_edit_set
from editable_lm.storage import read_jsonl, write_jsonl

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]


def test_counterfact_records_become_pairs():
    pairs = read_edit_set(DATA / "counterfact_sample.json")
    raw = json.loads((DATA / "counterfact_sample.json").read_text())
    assert len(pairs) == len(raw) >= 10
    first = pairs[0]
    assert first["prefix"] == "Lake Geneva lies on the border of Switzerland and"
    assert (first["name"], first["new_name"]) == ("France", "Italy")
    assert first["probes"] == [{"prefix": "Geneva's lake separates Switzerland from", "name": "France", "new_name": "Italy"}]
    assert [n["prefix"] for n in first["neighbours"]] == raw[0]["neighborhood_prompts"]
    assert all(n["name"] == "France" for n in first["neighbours"])
    assert len({p["article_id"] for p in pairs}) == len(pairs)  # each record its own "article"


def test_zsre_records_become_pairs():
    pairs = read_edit_set(DATA / "zsre_sample.jsonl")
    assert len(pairs) >= 10
    first = pairs[0]
    assert (first["prefix"], first["name"], first["new_name"]) == ("What is the capital of Norway?", "Oslo", "Bergen")
    assert first["probes"] == [{"prefix": "Which city is Norway's capital?", "name": "Oslo", "new_name": "Bergen"}]
    assert first["neighbours"] == [{"prefix": "nq question: who painted the mona lisa", "name": "Leonardo da Vinci"}]


@pytest.mark.parametrize("line, message", [
    ('{"src": "Q?", "alt": "B", "answers": [], "rephrase": "R?", "loc": "L", "loc_ans": "A"}', "answers must hold at least one"),
    ('{"src": "Q?", "alt": "A", "answers": ["A"], "rephrase": "R?", "loc": "L", "loc_ans": "A"}', "alt equals the answer"),
    ('{"src": "Q?", "alt": "B", "answers": ["A"], "loc": "L", "loc_ans": "A"}', "missing rephrase"),
    ('{"src": "Q?", "alt": "B", "answers": ["A"], "rephrase": "R?", "loc": "L", "loc_ans": ""}', "loc_ans must be a non-empty string"),
    ("{not json", "not valid JSON"),
])
def test_bad_zsre_line_names_file_and_line(tmp_path, line, message):
    good = (DATA / "zsre_sample.jsonl").read_text().splitlines()[0]
    path = tmp_path / "edits.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(EditLMError, match=message) as error:
        read_edit_set(path)
    assert str(error.value).startswith(f"{path}:2: ") and "\n" not in str(error.value)


def test_bad_counterfact_record_names_its_index(tmp_path):
    raw = json.loads((DATA / "counterfact_sample.json").read_text())
    raw[3]["requested_rewrite"]["prompt"] = "no subject slot"
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(EditLMError, match=r"record 3: requested_rewrite.prompt has no \{\} for the subject"):
        read_edit_set(path)


def test_unknown_format_is_one_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"question": "Q"}\n')
    with pytest.raises(EditLMError, match=r"x.jsonl:1: neither CounterFact .* nor zsRE"):
        read_edit_set(path)


def test_too_long_for_the_context_is_an_error(tokenizer):
    pairs = read_edit_set(DATA / "counterfact_sample.json")
    check_lengths(pairs, tokenizer, 64, "cf.json")  # the fixture fits
    with pytest.raises(EditLMError, match=r"cf.json: record 0: .* tokens, more than evaluate.seq_len 8"):
        check_lengths(pairs, tokenizer, 8, "cf.json")


def test_records_about_one_subject_share_an_article(tmp_path):
    raw = json.loads((DATA / "counterfact_sample.json").read_text())
    raw[4]["requested_rewrite"]["subject"] = raw[1]["requested_rewrite"]["subject"]
    path = tmp_path / "cf.json"
    path.write_text(json.dumps(raw))
    ids = [pair["article_id"] for pair in read_edit_set(path)]
    assert ids[4] == ids[1] and len(set(ids)) == len(raw) - 1


def run_stage(work: Path, stage: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py"), "--params", "params.yaml", *args],
                          cwd=work, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture
def edit_set_work(tmp_path, tokenizer):
    """A work directory as the pipeline's: corpus/ with both fixtures, a base model's tokenizer, some passages."""
    (tmp_path / "corpus").mkdir()
    for name in ("counterfact_sample.json", "zsre_sample.jsonl"):
        shutil.copy(DATA / name, tmp_path / "corpus" / name)
    tokenizer.save_pretrained(tmp_path / "base")
    write_jsonl(tmp_path / "passages.jsonl", [{"id": i, "article_id": i // 2, "text": f"Passage {i} on rivers."}
                                              for i in range(60)])
    return tmp_path


def small_params(work: Path, source: str, seq_len: int = 64) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    sizes = {"reliability": {"n_edits": 1, "n_fluency_prompts": 1}, "sweep": {"n_edits": 1, "n_ppl_passages": 1},
             "sequential": {"n_edits": 1}, "tune": {"n_edits": 1, "n_ppl_passages": 1},
             "validation": {"n_edits": 1, "n_ppl_passages": 1},
             "evaluate": {"n_ppl_passages": 1, "seq_len": seq_len}, "ft_kl": {"n_loc_passages": 1},
             "pairs": {"source": source}, "split": {"val_frac": 0.2, "test_frac": 0.2}}
    for section, values in sizes.items():
        params[section] = {**params[section], **values}
    (work / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.parametrize("name", ["counterfact_sample.json", "zsre_sample.jsonl"])
def test_pairs_and_split_stages_read_an_edit_set(edit_set_work, name):
    """`pairs.source: corpus/FILE`: the pairs stage writes the file's records as pairs, the split stage splits
    them by subject with no subject in two splits, and every test pair keeps its neighbourhood prompts."""
    work = edit_set_work
    small_params(work, f"corpus/{name}")
    pairs = run_stage(work, "pairs", "--passages", "passages.jsonl", "--corpus", "corpus", "--base", "base",
                      "--out", "pairs.jsonl")
    assert pairs.returncode == 0, pairs.stderr
    written = read_jsonl(work / "pairs.jsonl")
    assert written == read_edit_set(work / "corpus" / name)
    split = run_stage(work, "split", "--passages", "passages.jsonl", "--pairs", "pairs.jsonl", "--out", "split")
    assert split.returncode == 0, split.stderr
    parts = {s: read_jsonl(work / "split" / f"pairs_{s}.jsonl") for s in ("train", "val", "test")}
    assert sorted(p["id"] for rows in parts.values() for p in rows) == [p["id"] for p in written]
    subjects = [{p["article_id"] for p in rows} for rows in parts.values()]
    assert all(rows for rows in parts.values()) and not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    assert all(p["neighbours"] for p in parts["test"])


def test_pairs_stage_refuses_too_long_records_and_outside_paths(edit_set_work):
    work = edit_set_work
    (work / "pairs.jsonl").write_text("earlier\n")
    small_params(work, "corpus/counterfact_sample.json", seq_len=8)
    args = ("--passages", "passages.jsonl", "--corpus", "corpus", "--base", "base", "--out", "pairs.jsonl")
    result = run_stage(work, "pairs", *args)
    assert result.returncode == 1 and re.fullmatch(
        r"error: corpus/counterfact_sample.json: record 0: .* tokens, more than evaluate.seq_len 8\n", result.stderr)
    small_params(work, "corpus/../passages.jsonl")
    result = run_stage(work, "pairs", *args)
    assert result.returncode == 1 and result.stderr == (
        "error: pairs.source: corpus/../passages.jsonl is outside corpus/ (the directory DVC tracks for it)\n")
    assert (work / "pairs.jsonl").read_text() == "earlier\n"  # no half-written output
