"""Edit pairs: the name-swap pairs of the corpus's people (spaCy NER; `pairs.source: name-swaps`), or the records
of a CounterFact or zsRE file inside corpus/ (`pairs.source: corpus/FILE`), each of whose prefix + name, probes
and neighbourhood prompts must fit in `evaluate.seq_len` tokens of the base model's tokenizer."""

from pathlib import Path

from transformers import AutoTokenizer

from editable_lm.cli import run_stage, stage_args
from editable_lm.errors import EditLMError
from editable_lm.formats import check_lengths, read_edit_set
from editable_lm.pairs import build_pairs, find_people, load_ner
from editable_lm.params import NAME_SWAPS
from editable_lm.storage import read_jsonl, write_jsonl


def main() -> None:
    params, args = stage_args(__doc__, "--passages", "--corpus", "--base", "--out")
    source = params.pairs.source
    if source == NAME_SWAPS:
        passages = read_jsonl(args.passages)
        people = find_people(load_ner(), (p["text"] for p in passages), n_process=params.pairs.n_process, total=len(passages))
        pairs = build_pairs(passages, people, params.pairs)
    else:
        if not Path(source).resolve().is_relative_to(Path(args.corpus).resolve()):
            raise EditLMError(f"pairs.source: {source} is outside {args.corpus}/ (the directory DVC tracks for it)")
        pairs = read_edit_set(source)
        check_lengths(pairs, AutoTokenizer.from_pretrained(args.base), params.evaluate.seq_len, source)
    write_jsonl(args.out, pairs)
    print(f"{len(pairs)} edit pairs -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
