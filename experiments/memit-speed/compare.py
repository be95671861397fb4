"""Old vs new MEMIT on the real model, interleaved: 12 edits, blocks 5-12, two lambdas; deltas precomputed (shared).

    git show d92953e:editable_lm/editors/memit.py > /tmp/memit_old.py
    python experiments/memit-speed/compare.py      # 2 threads, quiet machine
"""
import sys, time, importlib.util
sys.path.insert(0, "benchmarks")
import torch
from editable_lm.editors import rome as _rome


def _run_to(split, prepared, end, params=None):
    """d92953e's `rome.run_to`, which the old MEMIT imports (removed since: no caller left in the library)."""
    split._run_blocks(prepared.hidden, prepared.args, prepared.kwargs, split.start, end + 1, params)


_rome.run_to = _run_to
spec = importlib.util.spec_from_file_location("memit_old", "/tmp/memit_old.py"); old = importlib.util.module_from_spec(spec); sys.modules["memit_old"] = old; spec.loader.exec_module(old)
from editable_lm.editors import memit as new
from editable_lm.editors import value_params
from editable_lm.layer_stats import weight_name
from editable_lm.split_forward import SplitForward
from editable_lm.params import load_params
from editable_lm.models import build_base_model
from editable_lm.corpus import load_passages
from bench import synthetic_pairs
params = load_params("params.yaml")
model, tok = build_base_model(params.model.name); model.config._attn_implementation = "eager"; model.eval().requires_grad_(False)
passages = load_passages(params.data)
pairs = synthetic_pairs(passages, 12)
contexts = tuple(" ".join(p["text"].split()[:5]) for p in passages[:2])
layers = tuple(range(5, 13)); moments = {l: torch.eye(1536) for l in layers}
value = value_params(params, {"steps": 20})  # as measured: ROME's 20 steps
split = SplitForward(model, [weight_name(model, l) for l in layers])
new.Memit("m", layers, value, 300.0, contexts, moments)._start(split, tok, pairs, 64)  # deltas into ROME's cache
new._STARTS.clear()
for rnd in range(2):
    t = time.perf_counter()
    for lam in (100.0, 300.0):
        a, _ = old.Memit("m", layers, value, lam, contexts, moments).edit(split, tok, None, pairs, 64)
    t_old = time.perf_counter() - t
    new._STARTS.clear(); t = time.perf_counter()
    for lam in (100.0, 300.0):
        b, _ = new.Memit("m", layers, value, lam, contexts, moments).edit(split, tok, None, pairs, 64)
    t_new = time.perf_counter() - t
    print(f"round {rnd}: old {t_old:.1f} s, new {t_new:.1f} s for two lambdas; equal: {all(torch.equal(a[k], b[k]) for k in a)}", flush=True)
