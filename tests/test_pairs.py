"""Edit pairs: spaCy PERSON mentions and the name swaps built from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editable_lm.corpus import load_passages
from editable_lm.errors import EditLMError
from editable_lm.pairs import (
    KnownPeople,
    Mention,
    build_pairs,
    common_words,
    find_people,
    keep_mention,
    known_people,
    load_ner,
    subject_names,
    swap_names,
)
from editable_lm.params import DataParams, PairsParams

# Candidate pairs labelled by reading them: see test_labelled_pairs_kept_are_real_people.
LABELS = Path(__file__).parent / "data" / "pair_labels.jsonl"

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
def nlp():
    return load_ner()


@pytest.fixture(scope="module")
def people(nlp):
    """Sentences and PERSON mentions of TEXTS, by the real spaCy model."""
    return find_people(nlp, TEXTS)


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


def test_find_people_cuts_the_possessive(nlp):
    """spaCy tags "Alexander Pushkin's" as PERSON; the mention is the name alone, offsets to match."""
    [[(sentence, mentions)]] = find_people(nlp, ["Critics admired Alexander Pushkin's poems."])
    assert [m.name for m in mentions] == ["Alexander Pushkin"]
    assert sentence[mentions[0].start : mentions[0].end] == "Alexander Pushkin"


# Who is a person: known biography subjects (wiki-vital), else spaCy's full names.

KNOWN = KnownPeople(frozenset({"Albert Einstein", "Johannes Kepler", "Marie Curie", "Isabella I of Castile", "Louis XIV", "Aeschylus"}))
COMMON = frozenset({"when", "later", "the"})


def keeps(sentence: str, name: str, title: str = "", biography: bool = False, known: KnownPeople = KNOWN) -> bool:
    start = sentence.index(name)
    return keep_mention(known, sentence, Mention(name, start, start + len(name)), title, biography, COMMON)


def test_known_people_are_titles_of_person_passages():
    """Biography titles lose their "(disambiguation)"; other articles add nobody."""
    passages = [{"title": "Hans Krebs (biochemist)", "person": True}, {"title": "Mauna Loa"}, {"title": "Tokyo", "person": False}]
    assert known_people(passages) == KnownPeople(frozenset({"Hans Krebs"}))


def test_subject_names():
    """A biography's title and the short name its article uses, regnal numbers and epithets dropped."""
    assert subject_names("Marcus Licinius Crassus") == {"Marcus Licinius Crassus", "Crassus"}
    assert subject_names("Pliny the Elder") == {"Pliny the Elder", "Pliny"}
    assert subject_names("Isabella I of Castile") == {"Isabella I of Castile", "Isabella"}
    assert subject_names("Hans Krebs (biochemist)") == {"Hans Krebs", "Krebs"}
    assert subject_names("Aeschylus") == {"Aeschylus"}


def test_known_full_name_anywhere_but_no_place():
    """A biography subject's full name counts in any article; spaCy's "Mauna Loa" does not."""
    sentence = "The eruption of Mauna Loa was watched by Albert Einstein."
    assert keeps(sentence, "Albert Einstein", title="Mauna Loa")
    assert not keeps(sentence, "Mauna Loa", title="Mauna Loa")


def test_short_name_only_in_its_own_biography():
    """"Kepler" is Johannes Kepler in his biography, nobody known elsewhere."""
    sentence = "In 1600 Kepler moved to Prague."
    assert keeps(sentence, "Kepler", "Johannes Kepler", biography=True)
    assert not keeps(sentence, "Kepler", "Prague")
    assert not keeps(sentence, "Kepler", "Albert Einstein", biography=True)
    assert keeps("When Kepler died, his work went on.", "Kepler", "Johannes Kepler", biography=True)  # "when": a common word


@pytest.mark.parametrize("sentence, name", [
    ("Johannes Kepler was an astronomer.", "Kepler"),  # the tail of his full name
    ("His friend Ludwig Kepler wrote.", "Kepler"),
    ("He devised the Kepler problem.", "Kepler"),  # a thing named after him
    ("He solved a problem of Kepler orbits.", "Kepler"),
    ("The Kepler Space Telescope was launched.", "Kepler"),  # followed by a capitalised word
    ("Critics admired Kepler's laws.", "Kepler's"),  # a possessive in the span
])
def test_fragments_and_things_named_after_the_subject_are_refused(sentence, name):
    assert not keeps(sentence, name, "Johannes Kepler", biography=True)


def test_honorifics_and_lists_are_not_fragments():
    """"Sir Albert Einstein" and "Marie Curie, Albert Einstein" keep the known full name."""
    assert keeps("A prize went to Sir Albert Einstein.", "Albert Einstein")
    assert keeps("Guests included Marie Curie, Albert Einstein and others.", "Albert Einstein")
    assert not keeps("The Louis XIV style spread.", "Louis XIV")  # "the" before it: a thing named after him


def test_without_biographies_spacy_full_names_decide():
    """The fallback (WikiText, a user's corpus): any clean full name spaCy tags PERSON, "Mauna Loa" too."""
    nobody = KnownPeople()
    assert keeps("The eruption of Mauna Loa was watched.", "Mauna Loa", known=nobody)
    assert not keeps("In 1600 Kepler moved to Prague.", "Kepler", "Johannes Kepler", biography=True, known=nobody)
    assert not keeps("Rome fell to the Byzantine Empire' armies.", "Byzantine Empire'", known=nobody)


def test_swap_names():
    """Plain full names of biography subjects; without biographies, clean full names NER found."""
    assert swap_names(KNOWN, ["Mauna Loa"]) == ["Albert Einstein", "Johannes Kepler", "Marie Curie"]
    assert swap_names(KnownPeople(), ["Mauna Loa", "Kepler", "Byzantine Empire'", "Nicholas I.", "Martin Luther King Jr."]) == [
        "Martin Luther King Jr.", "Mauna Loa",
    ]


BIO_PASSAGES = [
    {"id": 0, "article_id": 0, "title": "Albert Einstein", "person": True},
    {"id": 1, "article_id": 1, "title": "Marie Curie", "person": True},
    {"id": 2, "article_id": 2, "title": "Niels Bohr", "person": True},
    {"id": 3, "article_id": 3, "title": "Mauna Loa"},
]
BIO_PEOPLE = [
    sentences(("Albert Einstein was a physicist.", ["Albert Einstein"]), ("In 1905 Einstein wrote four papers.", [])),
    sentences(("Marie Curie was a chemist.", ["Marie Curie"]), ("In 1911 Curie won a prize.", ["Curie"])),
    sentences(("Niels Bohr was a physicist.", ["Niels Bohr"]), ("It rained.", []), ("He admired Marie Curie greatly.", [])),
    sentences(("Mauna Loa is a volcano.", ["Mauna Loa"]), ("Tourists watch Mauna Loa erupt.", ["Mauna Loa"])),
]


def test_pairs_with_biographies_swap_known_people_only():
    """Subjects by short name (found without spaCy too), known full names elsewhere; no volcano; new names from biographies."""
    pairs = build_pairs(BIO_PASSAGES, BIO_PEOPLE, PairsParams(context_sentences=1))
    assert {(p["article_id"], p["name"]) for p in pairs} == {(0, "Einstein"), (1, "Curie"), (2, "Marie Curie")}
    assert all(p["new_name"] in {"Albert Einstein", "Marie Curie", "Niels Bohr"} for p in pairs)
    assert all(p["sentence"][p["start"] : p["end"]] == p["name"] for p in pairs)


# The labelled sample: 480 candidate pairs, read one by one and labelled "is a real person's whole
# name" for the original and the new name. Sources: "before", the pipeline's output before these
# rules (mostly spaCy PERSON full names); "after-dev" and "after-dev2", outputs of two earlier drafts
# of the rules, whose errors shaped the final ones; "after", the output of the final rules, sampled
# and labelled once they were frozen (held out).

@pytest.fixture(scope="module")
def wiki():
    """What the offline corpus knows: its biographies, its common words, the names pairs swap in."""
    passages = load_passages(DataParams())
    known = known_people(passages)
    return known, common_words(p["text"] for p in passages), set(swap_names(known, []))


def labelled_pairs() -> list[dict]:
    return [json.loads(line) for line in LABELS.read_text().splitlines()]


def kept(row: dict, wiki) -> bool:
    """Whether the pipeline's rules keep this candidate: its original mention and its new name."""
    known, common, pool = wiki
    mention = Mention(row["name"], row["start"], row["end"])
    return keep_mention(known, row["sentence"], mention, row["title"], row["person"], common) and row["new_name"] in pool


def clean(row: dict) -> bool:
    return row["name_is_person"] and row["new_name_is_person"]


def precision(rows: list[dict]) -> float:
    return sum(map(clean, rows)) / len(rows)


def test_wiki_vital_marks_one_person_biographies(wiki):
    """The corpus flags biographies of one person: no band, pair of brothers or place."""
    known = wiki[0]
    assert {"Johannes Kepler", "Hans Krebs", "Aeschylus"} <= known.names
    assert not {"Pink Floyd", "Wright brothers", "Laurel and Hardy", "Mauna Loa", "Tamil Nadu"} & known.names


def test_labelled_pairs_kept_are_real_people(wiki):
    """At least 95% of the kept candidates swap a real person's name for another's: all of them, and the held-out sample alone."""
    rows = labelled_pairs()
    assert len(rows) >= 400
    for sample in (rows, [r for r in rows if r["source"] == "after"]):
        kept_rows = [r for r in sample if kept(r, wiki)]
        assert len(kept_rows) >= 100
        assert precision(kept_rows) >= 0.95


def test_labelled_clean_pairs_are_kept(wiki):
    """Recall: the rules keep at least 90% of the clean pairs sampled from the filtered outputs."""
    clean_rows = [r for r in labelled_pairs() if r["source"] != "before" and clean(r)]
    assert sum(kept(r, wiki) for r in clean_rows) / len(clean_rows) >= 0.9


def test_labelled_sample_can_fail_a_loose_filter():
    """Keeping every candidate falls short of 95% clean, and the old output was under half clean."""
    rows = labelled_pairs()
    assert precision(rows) < 0.9
    assert precision([r for r in rows if r["source"] == "before"]) < 0.5
