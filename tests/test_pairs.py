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
    # "Ann Lee" has "Then Carl Sagan spoke." as context: the only other name is there, so no pair.
    assert len(build_pairs(passages, people, PairsParams(context_sentences=1))) == 1
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
    """Names that contain each other are not swaps; with no other name, no pair, and no pairs at all is an error."""
    people = [[("We met Ann Lee.", [Mention("Ann Lee", 7, 14)]), ("Then Ann Lee Jones left.", [Mention("Ann Lee Jones", 5, 18)])]]
    with pytest.raises(EditLMError, match="no edit pair"):
        build_pairs([{"id": 0, "article_id": 0}], people, PairsParams())


def test_mention_without_a_free_name_is_skipped():
    """A name already in the context cannot be swapped in; that mention gives no pair, the others do."""
    people = [[("Then Carl Sagan spoke.", [Mention("Carl Sagan", 5, 15)]), ("Ann Lee listened.", [Mention("Ann Lee", 0, 7)])]]
    pairs = build_pairs([{"id": 0, "article_id": 0}], people, PairsParams(context_sentences=1))
    assert [(p["name"], p["new_name"]) for p in pairs] == [("Carl Sagan", "Ann Lee")]


# Generality probes, on hand-made mentions.

def mention(sentence: str, name: str) -> Mention:
    start = sentence.index(name)
    return Mention(name, start, start + len(name))


def sentences(*texts_and_names: tuple[str, list[str]]) -> list[tuple[str, list[Mention]]]:
    return [(text, [mention(text, name) for name in names]) for text, names in texts_and_names]


# Article 0 spans passages 0 and 1; article 1 (passage 2) names Albert Einstein too.
PROBE_PEOPLE = [
    sentences(
        ("Physics changed in 1905.", []),
        ("The theory was developed by Albert Einstein.", ["Albert Einstein"]),
        ("It was about light.", []),
        ("Later Einstein moved to Princeton.", []),  # the surname alone (not a PERSON mention)
        ("Everyone there knew Albert Einstein.", ["Albert Einstein"]),
    ),
    sentences(("A prize went to Einstein in 1921.", [])),
    sentences(("Marie Curie studied radium.", ["Marie Curie"]), ("Her friend Albert Einstein visited.", ["Albert Einstein"])),
]
PROBE_PASSAGES = [{"id": 0, "article_id": 0}, {"id": 1, "article_id": 0}, {"id": 2, "article_id": 1}]


def probe_pairs(**params) -> list[dict]:
    return build_pairs(PROBE_PASSAGES, PROBE_PEOPLE, PairsParams(context_sentences=2, **params))


def test_probes_from_other_sentences_of_the_article():
    """Full-name and surname-only sentences of the same article are probes, the target in the same form."""
    first = probe_pairs()[0]
    assert (first["sentence"], first["new_name"]) == ("The theory was developed by Albert Einstein.", "Marie Curie")
    assert first["probes"] == [
        # Context "The theory ... Albert Einstein." names him and is left out; "It was about light." stays.
        {"prefix": "It was about light. Later", "name": "Einstein", "new_name": "Curie"},
        # "Later Einstein moved ..." (surname) is left out of the context too.
        {"prefix": "It was about light. Everyone there knew", "name": "Albert Einstein", "new_name": "Marie Curie"},
        {"prefix": "A prize went to", "name": "Einstein", "new_name": "Curie"},  # another passage of the article
    ]


def test_probe_context_never_names_the_person():
    """No probe prefix contains the edited name or its surname, so the answer cannot be copied."""
    for pair in probe_pairs():
        for probe in pair["probes"]:
            assert pair["name"].split()[-1] not in probe["prefix"]


def test_own_sentence_and_other_articles_are_never_probes():
    """A pair's own sentence is not its probe; article 1's pair gets none of article 0's sentences."""
    pairs = {p["sentence"]: p for p in probe_pairs()}
    later = pairs["Everyone there knew Albert Einstein."]
    assert [p["prefix"] for p in later["probes"]] == [
        "Physics changed in 1905. The theory was developed by", "It was about light. Later", "A prize went to",
    ]
    # Article 1's own pair would need a new name absent from its context: "Marie Curie" is there.
    assert "Her friend Albert Einstein visited." not in pairs


def test_max_probes_caps_the_count():
    """At most max_probes probes per pair, the first ones in article order; 0 gives none."""
    full = probe_pairs()[0]["probes"]
    assert len(full) == 3
    assert probe_pairs(max_probes=2)[0]["probes"] == full[:2]
    assert probe_pairs(max_probes=0)[0]["probes"] == []
