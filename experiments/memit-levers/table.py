"""Markdown tables of `pilot.py`'s results files (one or more runs, merged): a row per (tokens, layer, blocks), a cell per lambda
(edit success / drawdown on 16 validation passages), and each layer's best setting by the stage's rule.

    python experiments/memit-levers/table.py experiments/memit-levers/results*.json > experiments/memit-levers/grid.md
"""
import json
import sys
from pathlib import Path

from editable_lm.evaluation import best_setting

runs = [json.loads(Path(path).read_text()) for path in sys.argv[1:]]
results = runs[0]
grid = [row for run in runs for row in run["grid"]]
# each run's key figures use C over its first token count
keys = [(layer, {"tokens": run["grid"][0]["tokens"], **k}) for run in runs for layer, k in run["keys"].items()]
lambdas = sorted({row["lambda"] for row in grid})
print(f"{results['n_edits']} validation edits in one update, deltas at {results['steps']} steps; "
      f"{results['distinct_last_words']} distinct last words of the prefixes.\n")
print("| C tokens | layer | blocks | " + " | ".join(f"λ {lam:g}" for lam in lambdas) + " |")
print("|---" * (3 + len(lambdas)) + "|")
for tokens, layer, blocks in dict.fromkeys((r["tokens"], r["layer"], r["n_layers"]) for r in grid):
    cells = {r["lambda"]: r for r in grid if (r["tokens"], r["layer"], r["n_layers"]) == (tokens, layer, blocks)}
    print(f"| {tokens:,} | {layer} | {blocks} | " + " | ".join(
        f"{cells[lam]['edit_success']:.2f} / {cells[lam]['ppl_drawdown_wide']:.3f}" if lam in cells else "-"
        for lam in lambdas) + " |")

print("\nThe stage's rule (`tune.target_success`; drawdown on the stage's 4 passages) per C and layer, and the best "
      "success at drawdown <= 0.05 on the 16 passages:\n")
print("| C tokens | layer | chosen | success | drawdown (4 / 16 passages) | best success at drawdown ≤ 0.05 (16) |")
print("|---|---|---|---|---|---|")
for tokens, layer in dict.fromkeys((r["tokens"], r["layer"]) for r in grid):
    rows = [r for r in grid if (r["tokens"], r["layer"]) == (tokens, layer)]
    named = {f"blocks {r['n_layers']}, λ {r['lambda']:g}": {**r, "ppl_drawdown": r["ppl_drawdown_stage"]} for r in rows}
    chosen = best_setting(named, 0.95)
    c = named[chosen]
    low = [r for r in rows if r["ppl_drawdown_wide"] <= 0.05]
    best = max(low, key=lambda r: r["edit_success"]) if low else None
    best_cell = (f"{best['edit_success']:.2f} (blocks {best['n_layers']}, λ {best['lambda']:g}, "
                 f"{best['ppl_drawdown_wide']:.3f})" if best else "-")
    print(f"| {tokens:,} | {layer} | {chosen} | {c['edit_success']:.2f} | {c['ppl_drawdown_stage']:.3f} / "
          f"{c['ppl_drawdown_wide']:.3f} | {best_cell} |")

print("\nHow alike the edits' keys are at the edit layer (each edit's nearest other edit; C-whitened: k_i^T C^-1 k_j "
      "normalised, the directions an update moves):\n")
print("| layer | C tokens | cosine: mean nearest | share > 0.9 | whitened: mean nearest | share > 0.9 |")
print("|---|---|---|---|---|---|")
for layer, k in keys:
    print(f"| {layer} | {k['tokens']:,} | {k['cosine']['mean_nearest']:.2f} | {k['cosine']['share_above_0.9']:.2f} | "
          f"{k['whitened']['mean_nearest']:.2f} | {k['whitened']['share_above_0.9']:.2f} |")
