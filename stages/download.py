"""Read the corpus (Wikipedia, WikiText or local files in --corpus) and write it as passages with article ids."""

from editable_lm.cli import run_stage, stage_args
from editable_lm.corpus import load_passages
from editable_lm.storage import write_jsonl


def main() -> None:
    params, args = stage_args(__doc__, "--corpus", "--out")
    passages = load_passages(params.data, corpus_dir=args.corpus)
    write_jsonl(args.out, passages)
    print(f"{len(passages)} passages from {passages[-1]['article_id'] + 1} articles -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
