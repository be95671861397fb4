"""MEMIT's one update of 100 edits on the real model, as the `editors` stage times it on test edits: the deltas
already optimised (ROME's cache: ROME ran on the same edits at the same layer and steps), the unedited start
computed afresh, then the next lambda of the grid from the shared start. Blocks 5-12 (8 blocks, the setting
validation chose), C from `second_moments` over `editors.n_stats_tokens` tokens, 100 synthetic edits.

    python experiments/memit-speed/hundred.py      # 2 threads, quiet machine
"""
import sys
import time

sys.path.insert(0, "benchmarks")
from bench import synthetic_pairs  # noqa: E402

from editable_lm.corpus import load_passages  # noqa: E402
from editable_lm.editors import Resources, build, memit as memit_module  # noqa: E402
from editable_lm.layer_stats import second_moments  # noqa: E402
from editable_lm.models import build_base_model  # noqa: E402
from editable_lm.params import load_params  # noqa: E402
from editable_lm.split_forward import SplitForward  # noqa: E402

N_EDITS, LAYER, N_LAYERS, LAMBDAS = 100, 12, 8, (300.0, 100.0)
params = load_params("params.yaml")
model, tokenizer = build_base_model(params.model.name)
model.config._attn_implementation = "eager"  # as the stages load it
model.eval().requires_grad_(False)
passages = load_passages(params.data)
blocks = list(range(LAYER - N_LAYERS + 1, LAYER + 1))
start = time.perf_counter()
moments, n_tokens = second_moments(model, tokenizer, passages, blocks, params.editors.n_stats_tokens, params.evaluate.seq_len)
print(f"second moments of blocks {blocks[0]}-{blocks[-1]} over {n_tokens} tokens: {time.perf_counter() - start:.1f} s", flush=True)
contexts = tuple(" ".join(p["text"].split()[: params.editors.context_words]) for p in passages[: params.editors.n_contexts])
pairs = synthetic_pairs(passages, N_EDITS)
resources = Resources(moments=moments, contexts=contexts)
setting = {"layer": LAYER, "steps": max(params.rome.steps), "n_layers": N_LAYERS}
memit = build("memit", params, {**setting, "lambda": LAMBDAS[0]}, resources)
split = SplitForward(model, memit.weight_names(model))
start = time.perf_counter()
memit.edit(split, tokenizer, None, pairs, params.evaluate.seq_len)  # fills ROME's delta cache
print(f"from scratch (100 deltas, the start, the update): {time.perf_counter() - start:.1f} s", flush=True)
for rnd in range(2):
    memit_module._STARTS.clear()  # the deltas stay cached, as after ROME's test run
    for lam in LAMBDAS:
        start = time.perf_counter()
        build("memit", params, {**setting, "lambda": lam}, resources).edit(split, tokenizer, None, pairs, params.evaluate.seq_len)
        print(f"round {rnd}, lambda {lam:g}: {time.perf_counter() - start:.1f} s "
              f"({'start afresh' if lam == LAMBDAS[0] else 'start shared'})", flush=True)
