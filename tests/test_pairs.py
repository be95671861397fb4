"""Edit pairs: spaCy PERSON mentions and the name swaps built from them."""

from __future__ import annotations

import pytest

from editable_lm.errors import EditLMError
from editable_lm.pairs import Mention, build_pairs, find_people, load_ner
from editable_lm.params import PairsParams

TEXTS = [
    "The theory of relativity was developed by Albert Einstein in Berlin. Later, Marie Curie met Niels Bohr in Paris.",
    "Isaac Newton wrote the Principia. It changed physics for centuries.",
    "Many physicists admired the work of Werner Heisenberg. The lectures of Richard Feynman were famous.",
]
PASSAGES = [
    {"id": 0, "article_id": 0, "text": TEXTS[0]},
    {"id": 1, "article_id": 1, "text": TEXTS[1]},
    {"id": 2, "article_id": 2, "text": TEXTS[2]},
]


@pytest.fixture(scope="module")
def people():
    """Sentences and PERSON mentions of TEXTS, by the real spaCy model."""
    return find_people(load_ner(), TEXTS)


def names_in(people) -> set[str]:
    return {m.name for sentences in people for _, mentions in sentences for m in mentions}


def test_find_people_offsets(people):
    """Every mention's offsets cut its name out of its sentence; the full names are found."""
    assert len(people) == len(TEXTS)
    for text, sentences in zip(TEXTS, people):
        for sentence, mentions in sentences:
            assert sentence in text
            for m in mentions:
                assert sentence[m.start : m.end] == m.name
    assert {"Albert Einstein", "Marie Curie", "Niels Bohr", "Isaac Newton"} <= names_in(people)


def test_pairs_are_consistent(people):
    """Each pair swaps one name for an unrelated corpus name, with a prefix ending before it."""
    pairs = build_pairs(PASSAGES, people, PairsParams(context_sentences=2))
    pool = names_in(people)
    assert pairs
    for pair in pairs:
        sentence, name, new = pair["sentence"], pair["name"], pair["new_name"]
        assert sentence[pair["start"] : pair["end"]] == name
        assert new in pool and new != name
        assert new not in name and name not in new
        assert pair["edited_sentence"] == sentence.replace(name, new, 1)
        assert pair["prefix"]
        assert pair["prefix"].endswith(sentence[: pair["start"]].rstrip())
        assert pair["prefix"].startswith(pair["context"])
    assert [p["id"] for p in pairs] == list(range(len(pairs)))
    assert "Albert Einstein" in {p["name"] for p in pairs}


def test_one_pair_per_sentence(people):
    """A sentence with two people gives one pair, about the first one."""
    pairs = build_pairs(PASSAGES, people, PairsParams())
    later = [p for p in pairs if p["sentence"].startswith("Later,")]
    assert [p["name"] for p in later] == ["Marie Curie"]


def test_name_first_in_passage_gives_no_pair(people):
    """Isaac Newton opens his passage: nothing precedes him, so no pair, whatever the context size."""
    for context in (0, 2):
        pairs = build_pairs(PASSAGES, people, PairsParams(context_sentences=context))
        assert "Isaac Newton" not in {p["name"] for p in pairs}
        assert all(p["article_id"] != 1 for p in pairs)


def test_max_per_article(people):
    """No article gives more than max_per_article pairs, even across passages."""
    passages = [{**p, "article_id": 0} for p in PASSAGES]  # one article
    pairs = build_pairs(passages, people, PairsParams(max_per_article=2))
    assert len(pairs) == 2
    assert len(build_pairs(passages, people, PairsParams(max_per_article=1))) == 1


def test_same_seed_same_pairs(people):
    """The swap names are drawn from a seeded generator."""
    assert build_pairs(PASSAGES, people, PairsParams(seed=3)) == build_pairs(PASSAGES, people, PairsParams(seed=3))


# Hand-made mentions: exact checks without spaCy.

def test_prefix_uses_context_sentences():
    """The prefix is the last `context_sentences` sentences, then the sentence up to the name."""
    people = [[
        ("First one.", []),
        ("Second here.", []),
        ("Then Carl Sagan spoke.", [Mention("Carl Sagan", 5, 15)]),
        ("Ann Lee listened.", [Mention("Ann Lee", 0, 7)]),
    ]]
    passages = [{"id": 7, "article_id": 4}]
    expected = {0: "Then", 1: "Second here. Then", 2: "First one. Second here. Then"}
    for context, prefix in expected.items():
        first = build_pairs(passages, people, PairsParams(context_sentences=context))[0]
        assert first["prefix"] == prefix
        assert first["new_name"] == "Ann Lee"  # the only other name
        assert first["edited_sentence"] == "Then Ann Lee spoke."
        assert (first["passage_id"], first["article_id"]) == (7, 4)
    pairs = build_pairs(passages, people, PairsParams(context_sentences=1))
    assert pairs[1]["name"] == "Ann Lee" and pairs[1]["prefix"] == "Then Carl Sagan spoke."
    # With no context, "Ann Lee" opens her sentence: no pair for it.
    assert len(build_pairs(passages, people, PairsParams(context_sentences=0))) == 1


def test_second_mention_used_when_first_has_no_prefix():
    """A name that opens the passage is skipped, and a later name in that sentence takes the pair."""
    people = [
        [("Bob Smith met Ann Lee.", [Mention("Bob Smith", 0, 9), Mention("Ann Lee", 14, 21)])],
        [("Cy Dow", [Mention("Cy Dow", 0, 6)])],  # only adds a name to the pool: nothing precedes it
    ]
    passages = [{"id": 0, "article_id": 0}, {"id": 1, "article_id": 1}]
    [pair] = build_pairs(passages, people, PairsParams(context_sentences=0))
    assert pair["name"] == "Ann Lee" and pair["prefix"] == "Bob Smith met"
    # "Bob Smith" is already in the sentence, so the only possible new name is "Cy Dow".
    assert pair["new_name"] == "Cy Dow"
    assert pair["edited_sentence"] == "Bob Smith met Cy Dow."


def test_needs_two_names():
    """A corpus with one distinct name has nothing to swap."""
    people = [[("We met Ann Lee.", [Mention("Ann Lee", 7, 14)])]]
    with pytest.raises(EditLMError, match="fewer than two"):
        build_pairs([{"id": 0, "article_id": 0}], people, PairsParams())


def test_no_unrelated_name():
    """Names that contain each other are not swaps; with no other name, it is an error."""
    people = [[("We met Ann Lee.", [Mention("Ann Lee", 7, 14)]), ("Then Ann Lee Jones left.", [Mention("Ann Lee Jones", 5, 18)])]]
    with pytest.raises(EditLMError, match="Ann Lee"):
        build_pairs([{"id": 0, "article_id": 0}], people, PairsParams())
