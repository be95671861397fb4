"""The offline Wikipedia corpus as passages."""

from editable_lm.corpus import load_passages
from editable_lm.params import DataParams


def test_wiki_vital_passages_in_article_order():
    """Offline corpus: article ids follow sorted titles, passage ids count up, short paragraphs are dropped."""
    passages = load_passages(DataParams(max_articles=20))
    titles = {p["article_id"]: p["title"] for p in passages}
    assert max(titles) < 20 and len(titles) >= 15
    assert [titles[a] for a in sorted(titles)] == sorted(titles.values())
    assert [p["id"] for p in passages] == list(range(len(passages)))
    assert all(len(p["text"].split()) >= DataParams().min_words for p in passages)
