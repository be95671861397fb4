"""CounterFact and zsRE files read into the pipeline's pairs, with one-line errors for bad records."""

import json
from pathlib import Path

import pytest

from editable_lm.errors import EditLMError
from editable_lm.formats import check_lengths, read_edit_set

DATA = Path(__file__).parent / "data"


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
