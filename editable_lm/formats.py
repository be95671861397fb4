"""Edit sets in the field's formats, read into the pipeline's pair structure.

- CounterFact (ROME): `requested_rewrite` {`prompt` with `{}` for the subject, `subject`, `target_new.str`,
  `target_true.str`}, `paraphrase_prompts`, `neighborhood_prompts`; a JSON array or JSON lines.
- zsRE (MEND's split): `src` (question), `alt` (new answer), `answers` (true ones), `rephrase`, `loc`, `loc_ans`;
  JSON lines or a JSON array.

A pair is what the name-swap pipeline writes: `prefix` and `name` (the true target) / `new_name`; generality
probes from the paraphrases (`probes`, each a prefix whose true and new continuations are the edit's), and
leakage probes from the neighbourhood (`neighbours`: prefixes whose true continuation must not become the new
name). Records about the same subject (CounterFact's `subject`, zsRE's where the file has one) share an
"article" (`article_id`), so that the split by article keeps them together; a zsRE record without a subject
is its own. A bad record is a one-line error naming the file and the record (its line for JSON lines, its
index for an array).
"""

from __future__ import annotations

import json
from pathlib import Path

from editable_lm.editing import encode_edit
from editable_lm.errors import EditLMError


def read_records(path: str | Path) -> list[tuple[str, dict]]:
    """(where, record) for each record of a JSON array or a JSON-lines file; `where` names it in errors."""
    path = Path(path)
    if not path.is_file():
        raise EditLMError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EditLMError(f"{path}: not valid JSON ({exc})") from None
        return [(f"{path}: record {index}", record) for index, record in enumerate(records)]
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}:{number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise EditLMError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return out


def _text(record: dict, where: str, *keys: str) -> str:
    """record[k1][k2]...: a non-empty string, else a one-line error naming the key."""
    value = record
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise EditLMError(f"{where}: missing {'.'.join(keys)}")
        value = value[key]
    if not isinstance(value, str) or not value.strip():
        raise EditLMError(f"{where}: {'.'.join(keys)} must be a non-empty string, got {value!r}")
    return value.strip()


def _texts(record: dict, where: str, key: str) -> list[str]:
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise EditLMError(f"{where}: {key} must be a list of non-empty strings")
    return [v.strip() for v in value]


def counterfact_pair(record: dict, where: str, index: int) -> dict:
    prompt = _text(record, where, "requested_rewrite", "prompt")
    subject = _text(record, where, "requested_rewrite", "subject")
    if "{}" not in prompt:
        raise EditLMError(f"{where}: requested_rewrite.prompt has no {{}} for the subject: {prompt!r}")
    true, new = (_text(record, where, "requested_rewrite", key, "str") for key in ("target_true", "target_new"))
    if true == new:
        raise EditLMError(f"{where}: target_new equals target_true ({new!r})")
    return {
        "id": index, "article_id": index, "prefix": prompt.format(subject), "name": true, "new_name": new,
        "probes": [{"prefix": p, "name": true, "new_name": new} for p in _texts(record, where, "paraphrase_prompts")],
        "neighbours": [{"prefix": p, "name": true} for p in _texts(record, where, "neighborhood_prompts")],
    }


def zsre_pair(record: dict, where: str, index: int) -> dict:
    answers = _texts(record, where, "answers")
    if not answers:
        raise EditLMError(f"{where}: answers must hold at least one answer")
    true, new = answers[0], _text(record, where, "alt")
    if true == new:
        raise EditLMError(f"{where}: alt equals the answer ({new!r})")
    return {
        "id": index, "article_id": index, "prefix": _text(record, where, "src"), "name": true, "new_name": new,
        "probes": [{"prefix": _text(record, where, "rephrase"), "name": true, "new_name": new}],
        "neighbours": [{"prefix": _text(record, where, "loc"), "name": _text(record, where, "loc_ans")}],
    }


READERS = {"counterfact": counterfact_pair, "zsre": zsre_pair}


def detect_format(record: dict) -> str:
    """`counterfact` or `zsre` from a record's keys."""
    if isinstance(record, dict) and "requested_rewrite" in record:
        return "counterfact"
    if isinstance(record, dict) and {"src", "alt"} <= set(record):
        return "zsre"
    raise EditLMError("neither CounterFact (requested_rewrite) nor zsRE (src, alt)")


def read_edit_set(path: str | Path) -> list[dict]:
    """The pairs of a CounterFact or zsRE file (the format read from its first record)."""
    records = read_records(path)
    if not records:
        raise EditLMError(f"{path}: no records")
    where, first = records[0]
    try:
        kind = detect_format(first)
    except EditLMError as exc:
        raise EditLMError(f"{where}: {exc}") from None
    pairs, groups = [], {}
    for index, (where, record) in enumerate(records):
        if not isinstance(record, dict):
            raise EditLMError(f"{where}: expected an object, got {type(record).__name__}")
        pair = READERS[kind](record, where, index)
        subject = (record.get("requested_rewrite") or {}).get("subject") or record.get("subject") or ("record", index)
        pairs.append({**pair, "article_id": groups.setdefault(subject, len(groups))})
    return pairs


def check_lengths(pairs: list[dict], tokenizer, max_len: int, path: str | Path) -> None:
    """Every prefix + name (the edit's, each probe's) must fit in `max_len` tokens: a one-line error naming
    the first record that does not, never a silent cut."""
    for index, pair in enumerate(pairs):
        texts = [(pair["prefix"], pair["new_name"]), *((p["prefix"], p["new_name"]) for p in pair["probes"]),
                 *((n["prefix"], n["name"]) for n in pair.get("neighbours", []))]
        for prefix, name in texts:
            n = len(encode_edit(tokenizer, prefix, name, max_len=10**9)[0])  # as the edit is encoded, uncut
            if n > max_len:
                raise EditLMError(f"{path}: record {index}: {prefix!r} + {name!r} is {n} tokens, more than "
                                  f"evaluate.seq_len {max_len}")
