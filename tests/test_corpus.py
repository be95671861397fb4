"""Corpora as passages: the offline Wikipedia default, the WikiText parser, and local corpora in corpus/."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from editable_lm.corpus import load_passages, parse_wikitext
from editable_lm.errors import ConfigError, EditLMError
from editable_lm.params import DataParams, parse_params
from smoke import ROOT, build_smoke_repo, repro, run, set_params

# WikiText-103 as its raw files and the hub's `text` column hold it: a space around every line and
# token, ` @-@ `-style marks, blank lines, a top-level title per article and deeper section headings.
WIKITEXT_TRAIN = """\
 
 = Valkyria Chronicles III = 
 
 Senjō no Valkyria 3 : Unrecorded Chronicles , commonly referred to as Valkyria Chronicles III outside Japan , is a tactical role @-@ playing video game developed by Sega and Media.Vision for the PlayStation Portable . 
 The game began development in 2010 , carrying over a large portion of the work done on Valkyria Chronicles II . 
 
 = = Gameplay = = 
 
 As with previous games , players take control of a military unit and take part in missions against enemy forces . 
 
 = = = Plot = = = 
 
 The Nameless are a penal military unit of 1 @,@ 000 soldiers who fight with state @-@ of @-@ the @-@ art weapons . 
 
"""
WIKITEXT_VALID = """\
 
 = Tower Building of the Little Rock Arsenal = 
 
 The Tower Building of the Little Rock Arsenal , also known as U.S. Arsenal Building , is a building located in MacArthur Park in downtown Little Rock , Arkansas . 
 Its height of 12 @.@ 5 metres made it the tallest building in the city for a decade . 
 
"""
WIKITEXT_TEST = """\
 
 = Robert Boulter = 
 
 Robert Boulter is an English film , television and theatre actor . He had a guest @-@ starring role on the television series The Bill in 2000 . 
 
"""
ARTICLES = [
    ("Valkyria Chronicles III", [
        "Senjō no Valkyria 3 : Unrecorded Chronicles , commonly referred to as Valkyria Chronicles III outside Japan , "
        "is a tactical role-playing video game developed by Sega and Media.Vision for the PlayStation Portable .",
        "The game began development in 2010 , carrying over a large portion of the work done on Valkyria Chronicles II .",
        "As with previous games , players take control of a military unit and take part in missions against enemy forces .",
        "The Nameless are a penal military unit of 1,000 soldiers who fight with state-of-the-art weapons .",
    ]),
    ("Tower Building of the Little Rock Arsenal", [
        "The Tower Building of the Little Rock Arsenal , also known as U.S. Arsenal Building , is a building located "
        "in MacArthur Park in downtown Little Rock , Arkansas .",
        "Its height of 12.5 metres made it the tallest building in the city for a decade .",
    ]),
    ("Robert Boulter", [
        "Robert Boulter is an English film , television and theatre actor . He had a guest-starring role on the "
        "television series The Bill in 2000 .",
    ]),
]
SPLITS = {"train": WIKITEXT_TRAIN, "valid": WIKITEXT_VALID, "test": WIKITEXT_TEST}


def corpus_passages(source: Path, corpus: Path, **params) -> list[dict]:
    return load_passages(DataParams(source=str(source), **params), corpus_dir=corpus)


def as_articles(passages: list[dict]) -> list[tuple[str, list[str]]]:
    """Passages grouped back into `(title, paragraphs)` by article id."""
    articles: dict[int, tuple[str, list[str]]] = {}
    for p in passages:
        articles.setdefault(p["article_id"], (p["title"], []))[1].append(p["text"])
    return [articles[a] for a in sorted(articles)]


def write(path: Path, content: str | bytes) -> Path:
    """Write a file, making its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus"
    path.mkdir()
    return path


def test_wiki_vital_passages_in_article_order():
    """Offline corpus: article ids follow sorted titles, passage ids count up, short paragraphs are dropped."""
    passages = load_passages(DataParams(max_articles=20))
    titles = {p["article_id"]: p["title"] for p in passages}
    assert max(titles) < 20 and len(titles) >= 15
    assert [titles[a] for a in sorted(titles)] == sorted(titles.values())
    assert [p["id"] for p in passages] == list(range(len(passages)))
    assert all(len(p["text"].split()) >= DataParams().min_words for p in passages)


def test_parse_wikitext_titles_sections_and_marks():
    """Top-level titles start articles; sections and blank lines are skipped; @-@, @,@, @.@ are undone."""
    lines = "".join(SPLITS.values()).splitlines(keepends=True)
    assert parse_wikitext(lines) == ARTICLES


def test_parse_wikitext_drops_text_before_the_first_title_and_undoes_marks_in_titles():
    lines = [" Text before any title belongs to no article . \n", " = Hurricane Kate ( 1 @,@ 985 ) = \n", " A = sign . \n"]
    assert parse_wikitext(lines) == [("Hurricane Kate ( 1,985 )", ["A = sign ."])]


@pytest.mark.parametrize("suffix", ["raw", "tokens"])
def test_wikitext_raw_directory(corpus, suffix):
    """`wiki.{train,valid,test}.raw` (or `.tokens`): the three splits' articles, in train, valid, test order."""
    directory = corpus / "wikitext-103-raw"
    directory.mkdir()
    for split, text in SPLITS.items():
        (directory / f"wiki.{split}.{suffix}").write_text(text, encoding="utf-8")
    passages = corpus_passages(directory, corpus)
    assert as_articles(passages) == ARTICLES
    assert [p["id"] for p in passages] == list(range(len(passages)))


def test_wikitext_parquet_directory_in_split_order(corpus):
    """The hub's layout: `<split>-0000N-of-0000M.parquet` with a `text` column, read train, validation, test."""
    directory = corpus / "wikitext" / "wikitext-103-raw-v1"
    directory.mkdir(parents=True)
    # Train in two shards, the second holding the last article's lines; names sort test < train < validation.
    train = WIKITEXT_TRAIN.splitlines(keepends=True)
    shards = {"train-00000-of-00002": train[:9], "train-00001-of-00002": train[9:],
              "validation-00000-of-00001": WIKITEXT_VALID.splitlines(keepends=True),
              "test-00000-of-00001": WIKITEXT_TEST.splitlines(keepends=True)}
    for name, lines in shards.items():
        pq.write_table(pa.table({"text": lines}), directory / f"{name}.parquet")
    assert as_articles(corpus_passages(directory, corpus)) == ARTICLES


def test_txt_file(corpus):
    path = corpus / "articles.txt"
    path.write_text("".join(SPLITS.values()), encoding="utf-8")
    assert as_articles(corpus_passages(path, corpus)) == ARTICLES


def test_jsonl_file_paragraphs_split_on_newlines(corpus):
    """Records `{"title", "text"}`; each line of the text is a paragraph; short ones are dropped."""
    path = corpus / "docs.jsonl"
    records = [
        {"title": "Ada Lovelace", "text": "Ada Lovelace wrote the first published program for a computing machine.\n\n"
                                          "Short line.\nShe worked with Charles Babbage on the Analytical Engine in London."},
        {"title": "Alan Turing", "text": "Alan Turing described a universal machine that can compute anything computable."},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    passages = corpus_passages(path, corpus)
    assert as_articles(passages) == [
        ("Ada Lovelace", ["Ada Lovelace wrote the first published program for a computing machine.",
                          "She worked with Charles Babbage on the Analytical Engine in London."]),
        ("Alan Turing", ["Alan Turing described a universal machine that can compute anything computable."]),
    ]
    assert len(corpus_passages(path, corpus, max_articles=1)) == 2


def test_params_accept_a_path_and_refuse_an_unknown_name():
    assert parse_params({"data": {"source": "corpus/docs.jsonl"}}).data.source == "corpus/docs.jsonl"
    with pytest.raises(ConfigError, match=r"^data\.source: unknown value 'my-docs\.jsonl' .*a path inside corpus/"):
        parse_params({"data": {"source": "my-docs.jsonl"}})


@pytest.mark.parametrize(
    "source, files, message",
    [
        ("missing.jsonl", {}, r"corpus/missing\.jsonl does not exist"),
        ("notes", {"notes/todo.md": "# not WikiText\n"}, r"corpus/notes: no WikiText files"),
        ("no-titles.txt", {"no-titles.txt": " Just a paragraph without any title line . \n"}, r"corpus/no-titles\.txt: no articles"),
        ("empty.jsonl", {"empty.jsonl": "\n"}, r"corpus/empty\.jsonl: no articles"),
        ("latin1.txt", {"latin1.txt": " = Café = \n Un café au lait . \n".encode("latin-1")},
         r"corpus/latin1\.txt: not UTF-8 text \(byte 0xe9\)"),
        ("latin1", {"latin1/wiki.train.raw": " = Café = \n".encode("latin-1")}, r"corpus/latin1/wiki\.train\.raw: not UTF-8"),
        ("bad.jsonl", {"bad.jsonl": '{"title": "A", "text": "B"}\n{"title": "A"\n'}, r"corpus/bad\.jsonl:2: not JSON"),
        ("fields.jsonl", {"fields.jsonl": '{"name": "A", "body": "B"}\n'}, r"corpus/fields\.jsonl:1: expected a record"),
        ("notes.csv", {"notes.csv": "title,text\n"}, r"corpus/notes\.csv: unknown corpus format"),
        ("pq", {"pq/train-00000-of-00001.parquet": b"PAR1 not really"},
         r"corpus/pq/train-00000-of-00001\.parquet: cannot read as parquet"),
    ],
)
def test_errors_name_the_path(corpus, source, files, message):
    for name, content in files.items():
        write(corpus / name, content)
    with pytest.raises(EditLMError, match=message):
        corpus_passages(corpus / source, corpus)


def test_parquet_without_text_column(corpus):
    (corpus / "pq").mkdir()
    pq.write_table(pa.table({"content": ["x"]}), corpus / "pq" / "train.parquet")
    with pytest.raises(EditLMError, match=r"corpus/pq/train\.parquet: no 'text' column"):
        corpus_passages(corpus / "pq", corpus)


def test_hub_snapshot_directory_names_its_configs(corpus):
    """The whole `Salesforce/wikitext` snapshot is not one corpus: the error names the config directories."""
    for config in ("wikitext-103-raw-v1", "wikitext-2-raw-v1"):
        (corpus / "wikitext" / config).mkdir(parents=True)
        pq.write_table(pa.table({"text": WIKITEXT_TEST.splitlines()}), corpus / "wikitext" / config / "test-00000-of-00001.parquet")
    with pytest.raises(EditLMError, match=r"subdirectories wikitext-103-raw-v1, wikitext-2-raw-v1 have parquet files"):
        corpus_passages(corpus / "wikitext", corpus)


def test_path_outside_the_corpus_directory_is_refused(tmp_path, corpus):
    outside = write(tmp_path / "docs.txt", WIKITEXT_TEST)
    for source in (outside, corpus / ".." / "docs.txt"):
        with pytest.raises(EditLMError, match=r"must be inside .*corpus/.*data\.source=.*corpus/docs\.txt"):
            corpus_passages(source, corpus)


def test_linked_file_is_read_and_linked_directory_refused(tmp_path, corpus):
    """DVC hashes a linked file's content but does not look into a linked directory."""
    (corpus / "linked.txt").symlink_to(write(tmp_path / "elsewhere" / "a.txt", WIKITEXT_TEST))
    assert as_articles(corpus_passages(corpus / "linked.txt", corpus)) == ARTICLES[2:]
    write(tmp_path / "wikitext" / "wiki.test.raw", WIKITEXT_TEST)
    (corpus / "wikitext").symlink_to(tmp_path / "wikitext")
    with pytest.raises(EditLMError, match=r"corpus/wikitext links to a directory"):
        corpus_passages(corpus / "wikitext", corpus)


def test_stage_error_is_one_line(tmp_path):
    params = write(tmp_path / "params.yaml", (ROOT / "params.yaml").read_text())
    set_params(tmp_path, data={"source": "corpus/no-such-file.jsonl"})
    result = run([sys.executable, "stages/download.py", "--params", str(params), "--corpus", "corpus",
                  "--out", str(tmp_path / "passages.jsonl")], ROOT, check=False)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: data.source 'corpus/no-such-file.jsonl': corpus/no-such-file.jsonl does not exist"
    ]


def test_dvc_reruns_download_when_the_corpus_changes(tmp_path):
    """corpus/ is a dependency of `download`: an edited file, plain or `dvc add`-ed, reruns it."""
    repo = build_smoke_repo(tmp_path / "repo")
    (repo / "corpus").mkdir(exist_ok=True)
    for name in ("README.md", ".gitignore"):  # what git tracks there, not a developer's own corpora
        shutil.copy(ROOT / "corpus" / name, repo / "corpus" / name)
    docs = write(repo / "corpus" / "docs.jsonl", json.dumps({"title": "A", "text": "One two three four five six seven eight."}))
    set_params(repo, data={"source": "corpus/docs.jsonl"})
    assert repro(repo, "download")[0] == {"check_params", "download"}
    assert "changed" not in run(["dvc", "status", "download"], repo).stdout

    docs.write_text(json.dumps({"title": "A", "text": "Nine ten eleven twelve thirteen fourteen fifteen sixteen."}))
    assert "modified:           corpus" in run(["dvc", "status", "download"], repo).stdout
    assert repro(repo, "download")[0] == {"download"}
    assert "Nine ten" in (repo / "data" / "passages.jsonl").read_text()

    # Tracked by DVC like any data: the .dvc file is a stage upstream of download, and stays in git.
    passages = (repo / "data" / "passages.jsonl").read_bytes()
    run(["dvc", "add", "corpus/docs.jsonl"], repo)
    assert "corpus/docs.jsonl.dvc" in run(["git", "status", "--short", "--untracked-files=all"], repo).stdout
    # The new .dvc file is in corpus/ too: download reruns once, to the same passages (nothing after it would).
    assert repro(repo, "download")[0] == {"download"}
    assert (repo / "data" / "passages.jsonl").read_bytes() == passages
    docs.write_text(json.dumps({"title": "B", "text": "Seventeen eighteen nineteen twenty twenty-one twenty-two twenty-three twenty-four."}))
    assert repro(repo, "download")[0] == {"download"}
    assert "Seventeen" in (repo / "data" / "passages.jsonl").read_text()
    assert "changed" not in run(["dvc", "status", "corpus/docs.jsonl.dvc", "download"], repo).stdout
