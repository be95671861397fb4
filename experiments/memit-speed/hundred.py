"""MEMIT's one update of 100 edits on the real model, as the `editors` stage times it on test edits: the deltas
already optimised (ROME's cache: ROME ran on the same edits at the same layer and steps), the unedited start
computed afresh, then the next lambda of the grid from the shared start. Blocks 5-12 (8 blocks, the setting
validation chose), C from `second_moments` over `editors.n_stats_tokens` tokens. With `data/split` present
(`dvc checkout data/split`) the stage's own inputs: its 100 test edits, key contexts and train passages; else
100 synthetic edits (shorter prefixes than the pipeline's, so faster).

    python experiments/memit-speed/hundred.py                   # 2 threads, quiet machine
    python experiments/memit-speed/hundred.py --value-steps 1   # the same update timings without 11 min of deltas

The update's cost does not depend on the deltas' values, so `--value-steps 1` (one optimisation step per delta
instead of ROME's validation-chosen steps) times the same update.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, "benchmarks")
from bench import synthetic_pairs  # noqa: E402

from editable_lm.corpus import load_passages  # noqa: E402
from editable_lm.editors import Resources, build, key_contexts, memit as memit_module  # noqa: E402
from editable_lm.evaluation import test_sample  # noqa: E402
from editable_lm.layer_stats import second_moments  # noqa: E402
from editable_lm.models import build_base_model  # noqa: E402
from editable_lm.params import load_params  # noqa: E402
from editable_lm.split_forward import SplitForward  # noqa: E402
from editable_lm.storage import read_jsonl  # noqa: E402

N_EDITS, LAYER, N_LAYERS, LAMBDAS = 100, 12, 8, (300.0, 100.0)
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--value-steps", type=int, default=0, help="steps per delta (default: max(rome.steps))")
parser.add_argument("--rounds", type=int, default=2, help="rounds of the two lambdas after the first update")
args = parser.parse_args()
params = load_params("params.yaml")
model, tokenizer = build_base_model(params.model.name)
model.config._attn_implementation = "eager"  # as the stages load it
model.eval().requires_grad_(False)
SPLIT = Path("data/split")
passages = read_jsonl(SPLIT / "passages_train.jsonl") if SPLIT.exists() else load_passages(params.data)
blocks = list(range(LAYER - N_LAYERS + 1, LAYER + 1))
start = time.perf_counter()
moments, n_tokens = second_moments(model, tokenizer, passages, blocks, params.editors.n_stats_tokens, params.evaluate.seq_len)
print(f"second moments of blocks {blocks[0]}-{blocks[-1]} over {n_tokens} tokens: {time.perf_counter() - start:.1f} s", flush=True)
if SPLIT.exists():
    contexts = key_contexts(read_jsonl(SPLIT / "passages_val.jsonl"), params)
    pairs = test_sample(SPLIT, params.evaluate, params.reliability)[0][:N_EDITS]
else:
    contexts = tuple(" ".join(p["text"].split()[: params.editors.context_words]) for p in passages[: params.editors.n_contexts])
    pairs = synthetic_pairs(passages, N_EDITS)
print(f"{len(pairs)} {'test' if SPLIT.exists() else 'synthetic'} edits, contexts {contexts}", flush=True)
resources = Resources(moments=moments, contexts=contexts)
setting = {"layer": LAYER, "steps": args.value_steps or max(params.rome.steps), "n_layers": N_LAYERS}
memit = build("memit", params, {**setting, "lambda": LAMBDAS[0]}, resources)
split = SplitForward(model, memit.weight_names(model))
start = time.perf_counter()
memit.edit(split, tokenizer, None, pairs, params.evaluate.seq_len)  # fills ROME's delta cache
print(f"from scratch (100 deltas at {setting['steps']} steps, the start, the update): {time.perf_counter() - start:.1f} s",
      flush=True)
for rnd in range(args.rounds):
    memit_module._STARTS.clear()  # the deltas stay cached, as after ROME's test run
    for lam in LAMBDAS:
        start = time.perf_counter()
        build("memit", params, {**setting, "lambda": lam}, resources).edit(split, tokenizer, None, pairs, params.evaluate.seq_len)
        print(f"round {rnd}, lambda {lam:g}: {time.perf_counter() - start:.1f} s "
              f"({'start afresh' if lam == LAMBDAS[0] else 'start shared'})", flush=True)
