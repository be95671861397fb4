"""Find people with spaCy NER and build name-swap edit pairs."""

from editable_lm.cli import run_stage, stage_args
from editable_lm.pairs import build_pairs, find_people, load_ner
from editable_lm.storage import read_jsonl, write_jsonl


def main() -> None:
    params, args = stage_args(__doc__, "--passages", "--out")
    passages = read_jsonl(args.passages)
    people = find_people(load_ner(), (p["text"] for p in passages), n_process=params.pairs.n_process, total=len(passages))
    pairs = build_pairs(passages, people, params.pairs)
    write_jsonl(args.out, pairs)
    print(f"{len(pairs)} edit pairs -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
