"""Edit evaluation on a tiny random Llama over SmolLM2's vocabulary: cases whose answer is known."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.func import functional_call

from conftest import tiny_llama
from editable_lm.editing import collate, encode_edit, kl_divergence
from editable_lm.editors import Resources, build
from editable_lm.editors.gradient import FineTune, edit_model, edit_with_steps, setting_of, strength_grid
from editable_lm.errors import EditLMError
from editable_lm.evaluation import (
    COMPARED_METRICS, EDIT_METRICS, Fluency, batched_edits, best_setting, evaluate_edits, held_out, locality,
    loaded_models, log_schedule, measure_edit, same_weights, reference, sequential_edits,
)
from editable_lm.fluency import generate, mean_ngram_entropy
from editable_lm.metrics import edit_success, perplexity, sequence_logprob
from editable_lm.models import INNER_LR_SCALE_FILE, edit_learning_rates, edit_parameter_names, save_checkpoint
from editable_lm.params import EditParams, parse_params
from editable_lm.split_forward import SplitForward, Targets
from editable_lm.training import encode_edits

MAX_LEN = 32
PAIRS = [
    {"id": 0, "article_id": 0, "prefix": "The theory of relativity was developed by", "name": "Albert Einstein",
     "new_name": None,  # set to the model's own greedy prediction, so that this edit already succeeds
     "probes": [{"prefix": "In 1921 the Nobel Prize in Physics went to", "name": "Albert Einstein", "new_name": "Marie Curie"},
                {"prefix": "Light quanta were explained by", "name": "Einstein", "new_name": "Curie"}]},
    {"id": 1, "article_id": 0, "prefix": "Radioactivity was studied in Paris by", "name": "Marie Curie", "new_name": "Niels Bohr",
     "probes": [{"prefix": "Polonium was discovered by", "name": "Curie", "new_name": "Bohr"}]},
    {"id": 2, "article_id": 1, "prefix": "The Principia was written by", "name": "Isaac Newton", "new_name": "Werner Heisenberg",
     "probes": []},
    {"id": 3, "article_id": 2, "prefix": "The famous lectures on physics were given by", "name": "Richard Feynman",
     "new_name": "Paul Dirac", "probes": []},
]
PASSAGES = [
    {"text": "Copenhagen is the capital of Denmark, a country in northern Europe."},
    {"text": "Isaac Newton wrote the Principia, a book about motion and gravity."},
]
LOC_PASSAGES = [{"text": "The river flows through the old town to the sea."}, {"text": "Bread is baked from flour and water."}]


@pytest.fixture
def model(tokenizer):
    """A tiny Llama split below its top block, whose MLP weights the edits change."""
    lm = tiny_llama(vocab=len(tokenizer)).requires_grad_(False)
    return SplitForward(lm, edit_parameter_names(lm, EditParams(blocks=1)))


@pytest.fixture
def names(model):
    return model.names


@pytest.fixture
def ref(model, tokenizer):
    return reference(model, tokenizer, PASSAGES, MAX_LEN)


def greedy_name(model, tokenizer, prefix: str) -> str:
    """The word the model predicts after `prefix`, checked to encode back as that one token."""
    ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    token = model.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax().item()
    word = tokenizer.decode([token])
    assert word.startswith(" ") and tokenizer(word, add_special_tokens=False)["input_ids"] == [token]
    return word.strip()


@pytest.fixture
def pairs(model, tokenizer):
    pairs = copy.deepcopy(PAIRS)
    pairs[0]["new_name"] = greedy_name(model, tokenizer, pairs[0]["prefix"])
    return pairs


@torch.no_grad()
def full_target_logits(model, example):
    """Logits at the labelled positions from the whole model, not from the split path."""
    batch = collate([example], model.model.config.pad_token_id)
    targets = Targets.of(batch["labels"])
    logits = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits[targets.where], targets


def logp(model, tokenizer, prefix: str, name: str) -> float:
    return sequence_logprob(*full_target_logits(model, encode_edit(tokenizer, prefix, name, MAX_LEN))).item()


def pre_edit_success(model, tokenizer, pairs) -> list[float]:
    """Whether the unedited model already predicts each new name, computed without the evaluation module."""
    out = []
    for pair in pairs:
        example = encode_edit(tokenizer, pair["prefix"], pair["new_name"], MAX_LEN)
        out.append(float(edit_success(*full_target_logits(model, example)).item()))
    return out


@torch.no_grad()
def test_edit_with_zero_lr_changes_nothing(model, tokenizer, names, ref, pairs):
    """lr=0: no drawdown, KL 0, full top-1 agreement, no leakage, success and counterfactual as before."""
    rows = evaluate_edits(model, tokenizer, pairs, [FineTune("ft", 0.0, 2)], ref, MAX_LEN, n_leak_probes=2)
    success = pre_edit_success(model, tokenizer, pairs)
    assert success[0] == 1.0 and 0.0 in success  # both outcomes occur, so the comparison can fail
    assert [r["edit_id"] for r in rows] == [0, 1, 2, 3]
    for row, pair, succeeded in zip(rows, pairs, success):
        assert set(EDIT_METRICS) <= set(row)
        assert (row["generality"] is None) == (not pair["probes"])
        assert row["ppl_drawdown"] == pytest.approx(0.0, abs=1e-6)
        assert row["kl"] == pytest.approx(0.0, abs=1e-6)
        assert row["top1_agreement"] == 1.0
        assert row["leakage"] == 0.0 and row["neighbourhood"] == 1.0
        assert row["ppl_post"] == pytest.approx(ref.ppl, rel=1e-6)
        assert row["fluency"] is None  # no Fluency given
        assert row["logp_new_post"] == pytest.approx(row["logp_new_pre"], abs=1e-5)
        assert row["logp_new_pre"] == pytest.approx(logp(model, tokenizer, pair["prefix"], pair["new_name"]), abs=1e-4)
        assert row["edit_success"] == succeeded
        wins = logp(model, tokenizer, pair["prefix"], pair["new_name"]) > logp(model, tokenizer, pair["prefix"], pair["name"])
        assert row["counterfactual_success"] == float(wins)
        if pair["probes"]:
            general = [logp(model, tokenizer, p["prefix"], p["new_name"]) > logp(model, tokenizer, p["prefix"], p["name"]) for p in pair["probes"]]
            assert row["generality"] == pytest.approx(sum(general) / len(general))


def test_strong_edit_raises_new_name_logprob(model, tokenizer, names, ref, pairs):
    """lr=1, 3 steps: the new name becomes more likely; the model's own weights stay as they were."""
    before = {n: p.clone() for n, p in model.model.state_dict().items()}
    for pair in pairs:
        row = measure_edit(model, tokenizer, pair, [], [FineTune("ft", 1.0, 3)], ref, MAX_LEN)[0]
        assert row["logp_new_post"] > row["logp_new_pre"] + 0.05
        assert row["leakage"] is None  # no leak pairs given
        assert row["sec_per_edit"] > 0
    assert all(torch.equal(p, before[n]) for n, p in model.model.state_dict().items())


SURNAMES = ("Smith", "Brown", "Jones", "Miller", "Davis", "Wilson", "Taylor", "Clark", "Newton", "Darwin", "Planck", "Euler")


def test_strong_edit_flips_a_close_counterfactual(model, tokenizer, names, ref):
    """When the old name barely beats the new one, an edit flips it: counterfactual, same-sentence probe and leak probe."""
    prefix = PAIRS[1]["prefix"]
    one_token = [s for s in SURNAMES if len(tokenizer(" " + s, add_special_tokens=False)["input_ids"]) == 1]
    new, old = sorted(one_token, key=lambda s: logp(model, tokenizer, prefix, s))[:2]  # new just below old
    assert logp(model, tokenizer, prefix, new) < logp(model, tokenizer, prefix, old)
    pair = {"id": 9, "article_id": 5, "prefix": prefix, "name": old, "new_name": new,
            "probes": [{"prefix": prefix, "name": old, "new_name": new}]}  # the edit's own sentence as a probe
    # Leak probes: the same sentence (new name newly wins: leaks) and one the new name already won before.
    leak_pairs = [{"prefix": prefix, "name": old}, {"prefix": prefix, "name": "Albert Einstein"}]
    row = measure_edit(model, tokenizer, pair, leak_pairs, [FineTune("ft", 1.0, 3)], ref, MAX_LEN)[0]
    assert (row["counterfactual_success"], row["generality"], row["leakage"]) == (1.0, 1.0, 0.5)


def test_a_pairs_own_neighbours_are_its_leakage_probes(model, tokenizer, names, ref):
    """A pair with `neighbours` (CounterFact, zsRE) is probed on them, up to n_leak_probes, not on other pairs:
    the same rows as measure_edit with those neighbours as the leak pairs."""
    prefix = PAIRS[1]["prefix"]
    one_token = [s for s in SURNAMES if len(tokenizer(" " + s, add_special_tokens=False)["input_ids"]) == 1]
    new, old = sorted(one_token, key=lambda s: logp(model, tokenizer, prefix, s))[:2]
    neighbours = [{"prefix": prefix, "name": old}, {"prefix": prefix, "name": "Albert Einstein"}, {"prefix": "x", "name": "y"}]
    pair = {"id": 9, "article_id": 5, "prefix": prefix, "name": old, "new_name": new, "probes": [], "neighbours": neighbours}
    other = {**PAIRS[2], "id": 10, "article_id": 6, "probes": []}
    ft = FineTune("ft", 1.0, 3)
    rows = evaluate_edits(model, tokenizer, [pair, other], [ft], ref, MAX_LEN, n_leak_probes=2)
    assert rows[0]["leakage"] == 0.5  # the first two neighbours (see the close-counterfactual test), not `other`
    expected = measure_edit(model, tokenizer, pair, neighbours[:2], [ft], ref, MAX_LEN)[0]
    assert {k: v for k, v in rows[0].items() if k != "sec_per_edit"} == {k: v for k, v in expected.items() if k != "sec_per_edit"}


def test_no_leakage_probes_gives_none(model, tokenizer, names, ref, pairs):
    """Without leakage probes (n_leak_probes=0, or no pair from another article), leakage is None."""
    rows = evaluate_edits(model, tokenizer, pairs[:2], [FineTune("ft", 0.0, 1)], ref, MAX_LEN, n_leak_probes=0)
    assert [r["leakage"] for r in rows] == [None, None]
    same_article = pairs[:2]  # both in article 0: nothing to probe leakage with
    rows = evaluate_edits(model, tokenizer, same_article, [FineTune("ft", 0.0, 1)], ref, MAX_LEN, n_leak_probes=3)
    assert [r["leakage"] for r in rows] == [None, None]


def test_kl_penalty_keeps_locality_sample_closer(model, tokenizer, names, pairs):
    """FT+KL with a huge weight has lower KL on its locality sample than FT at the same lr and steps."""
    params = parse_params({"evaluate": {"edit_steps": 5}, "ft_kl": {"kl_weight": 1e4}})
    resources = Resources(model, tokenizer, MAX_LEN, 0.5, LOC_PASSAGES)
    ft, ft_kl = (build(name, params, None, resources) for name in ("ft", "ft_kl"))
    assert (ft.name, ft_kl.name) == ("ft", "ft_kl") and ft.locality is None and ft_kl.locality is not None
    assert (ft_kl.steps, ft_kl.kl_weight, ft_kl.locality.inputs.batch["input_ids"].shape[0]) == (5, 1e4, 2)
    for pair in pairs[1:3]:
        batch = encode_edits([pair], tokenizer, MAX_LEN)
        kl_ft = locality(model, ft_kl.locality, edit_model(model, model.prepare(batch), ft))["kl"]
        kl_penalised = locality(model, ft_kl.locality, edit_model(model, model.prepare(batch), ft_kl))["kl"]
        assert kl_ft > 0 and kl_penalised < 0.5 * kl_ft


def test_registry_builds_the_gradient_editors_from_their_sections(model, tokenizer):
    """Each gradient editor from the list, in its order, with its own section's settings and the model's lr; the
    base-model ones are left to the editors stage."""
    from editable_lm.editors import base_editor_names, gradient_names

    params = parse_params({"editors": {"names": ["ft", "mend", "rome", "until_success", "memit", "ft_kl"]},
                           "evaluate": {"edit_steps": 3}, "until_success": {"max_steps": 7}, "ft_kl": {"kl_weight": 2.0}})
    assert gradient_names(params) == ["ft", "until_success", "ft_kl"]
    assert base_editor_names(params) == ["mend", "rome", "memit"]
    lr = {name: 0.1 for name in model.names}
    ft, until, ft_kl = (build(name, params, None, Resources(model, tokenizer, MAX_LEN, lr, LOC_PASSAGES))
                        for name in gradient_names(params))
    assert (ft.steps, ft.until_success, ft.kl_weight, ft.lr) == (3, False, 0.0, lr)
    assert (until.steps, until.until_success, until.kl_weight) == (7, True, 0.0)
    assert (ft_kl.steps, ft_kl.kl_weight) == (3, 2.0)
    with pytest.raises(EditLMError, match="^ft_kl: no locality passages"):
        build("ft_kl", params, None, Resources(model, tokenizer, MAX_LEN, lr))


def test_kl_penalty_has_no_effect_on_a_single_step(model, tokenizer, names, pairs):
    """KL(pre || post) has zero gradient at the unedited weights, so one FT+KL step equals one FT step."""
    ft, ft_kl = FineTune("ft", 1.0, 1), FineTune("ft_kl", 1.0, 1, 1e4, reference(model, tokenizer, LOC_PASSAGES, MAX_LEN))
    batch = encode_edits([pairs[1]], tokenizer, MAX_LEN)
    plain, penalised = edit_model(model, model.prepare(batch), ft), edit_model(model, model.prepare(batch), ft_kl)
    assert any(not torch.equal(plain[n], model.model.get_parameter(n)) for n in names)
    for name in names:
        torch.testing.assert_close(penalised[name], plain[name], rtol=0, atol=1e-6)


def test_log_schedule():
    """1, 2, 5, 10, ... up to and including n."""
    assert log_schedule(100) == [1, 2, 5, 10, 20, 50, 100]
    assert log_schedule(7) == [1, 2, 5, 7]
    assert log_schedule(1) == [1]
    assert log_schedule(4) == [1, 2, 4]


@torch.no_grad()
def test_sequential_retention_when_nothing_is_forgotten(model, tokenizer, names, ref, pairs):
    """lr=0: at every checkpoint retention is the pre-edit success rate of the edits so far, drawdown 0."""
    rows = sequential_edits(model, tokenizer, pairs, FineTune("ft", 0.0, 1), ref, MAX_LEN)
    success = pre_edit_success(model, tokenizer, pairs)
    assert [r["n_edits"] for r in rows] == [1, 2, 4]
    for row in rows:
        n = row["n_edits"]
        assert row["retention"] == pytest.approx(sum(success[:n]) / n)
        assert row["ppl_drawdown"] == pytest.approx(0.0, abs=1e-6) and row["kl"] == pytest.approx(0.0, abs=1e-6)
        assert row["top1_agreement"] == 1.0
    assert rows[0]["retention"] == 1.0 and rows[-1]["retention"] < 1.0


def test_sequential_edits_build_on_each_other(model, tokenizer, names, ref, pairs):
    """The second edit starts from the first one's weights, and the model's own parameters never change."""
    before = {n: p.clone() for n, p in model.model.state_dict().items()}
    procedure = FineTune("ft", 1.0, 2)
    rows = sequential_edits(model, tokenizer, pairs[1:3], procedure, ref, MAX_LEN)
    first = edit_model(model, model.prepare(encode_edits([pairs[1]], tokenizer, MAX_LEN)), procedure)
    second = encode_edits([pairs[2]], tokenizer, MAX_LEN)
    chained = locality(model, ref, edit_model(model, model.prepare(second), procedure, start=first))["kl"]
    alone = locality(model, ref, edit_model(model, model.prepare(second), procedure))["kl"]
    assert rows[-1]["kl"] == pytest.approx(chained, rel=1e-4) and rows[-1]["kl"] != pytest.approx(alone, rel=1e-2)
    assert all(torch.equal(p, before[n]) for n, p in model.model.state_dict().items())


@torch.no_grad()
def test_batched_edits_one_row_per_batch(model, tokenizer, names, ref, pairs):
    """ceil(n / batch_size) rows; with lr=0 each row's success is its batch's pre-edit success rate."""
    success = pre_edit_success(model, tokenizer, pairs)
    for size in (1, 3, 4):
        rows = batched_edits(model, tokenizer, pairs, FineTune("ft", 0.0, 1), ref, MAX_LEN, size)
        assert [r["batch"] for r in rows] == list(range(math.ceil(len(pairs) / size)))
        assert [r["batch_size"] for r in rows] == [size] * len(rows)  # the last, shorter batch too
        for row in rows:
            chunk = success[row["batch"] * size : (row["batch"] + 1) * size]
            assert row["edit_success"] == pytest.approx(sum(chunk) / len(chunk))
            assert row["ppl_drawdown"] == pytest.approx(0.0, abs=1e-6)



def full_model_edit_loss(lm, weights: dict, tokenizer, pair: dict) -> torch.Tensor:
    """Mean cross-entropy of the new name's tokens after the prefix, on the whole HF model with `weights`
    swapped in, from the pair's own unpadded tokens."""
    ids, labels = encode_edit(tokenizer, pair["prefix"], pair["new_name"], MAX_LEN)
    n_name = sum(label != -100 for label in labels)
    logits = functional_call(lm, weights, args=(), kwargs={"input_ids": torch.tensor([ids])}).logits
    return F.cross_entropy(logits[0, -n_name - 1 : -1], torch.tensor(labels[-n_name:]))


def test_batched_per_edit_step_is_the_step_on_summed_edit_losses(tokenizer):
    """`FineTune(per_edit=True)`, one step at lr on a batch of 3 edits: the weights of one SGD step on the sum of
    the 3 edits' own mean losses (each computed alone, unpadded, on the float64 HF model), not on their pooled
    mean; `batched_edits`' row for that batch is measured at those weights (success by hand, locality on the
    whole model) and carries its batch size."""
    lm = tiny_llama(vocab=len(tokenizer)).double().requires_grad_(False)
    model = SplitForward(lm, edit_parameter_names(lm, EditParams(blocks=1)))
    pairs = copy.deepcopy(PAIRS)
    pairs[0]["new_name"] = greedy_name(model, tokenizer, pairs[0]["prefix"])
    batch, lr = pairs[:3], 3.0
    procedure = FineTune("batched", lr, 1, per_edit=True)
    edited = edit_model(model, model.prepare(encode_edits(batch, tokenizer, MAX_LEN)), procedure)

    start = {n: lm.get_parameter(n).detach().clone().requires_grad_(True) for n in model.names}
    total = sum(full_model_edit_loss(lm, start, tokenizer, pair) for pair in batch)
    grads = dict(zip(model.names, torch.autograd.grad(total, list(start.values()))))
    expected = {n: start[n].detach() - lr * grads[n] for n in model.names}
    assert set(edited) == set(expected)
    for name in model.names:
        torch.testing.assert_close(edited[name], expected[name], rtol=1e-9, atol=1e-12, msg=lambda m: f"{name}: {m}")
    pooled = edit_model(model, model.prepare(encode_edits(batch, tokenizer, MAX_LEN)), FineTune("pooled", lr, 1))
    assert max((pooled[n] - expected[n]).abs().max() for n in model.names) > 1e-3 * max(g.abs().max() for g in grads.values())

    ref = reference(model, tokenizer, PASSAGES, MAX_LEN)
    rows = batched_edits(model, tokenizer, pairs, procedure, ref, MAX_LEN, 3)
    assert [(r["batch_size"], r["batch"]) for r in rows] == [(3, 0), (3, 1)]  # 4 edits: a batch of 3, then of 1
    with torch.no_grad():
        holds = []
        for pair in batch:
            ids, labels = encode_edit(tokenizer, pair["prefix"], pair["new_name"], MAX_LEN)
            n_name = sum(label != -100 for label in labels)
            logits = functional_call(lm, expected, args=(), kwargs={"input_ids": torch.tensor([ids])}).logits
            holds.append(bool((logits[0, -n_name - 1 : -1].argmax(-1) == torch.tensor(labels[-n_name:])).all()))
        passages = ref.inputs.batch
        kwargs = {"input_ids": passages["input_ids"], "attention_mask": passages["attention_mask"]}
        before, after = lm(**kwargs).logits, functional_call(lm, expected, args=(), kwargs=kwargs).logits
    assert 0 < sum(holds) < len(holds)  # some hold, some do not: the fraction is informative
    ppl_pre = perplexity(torch.log_softmax(before, -1), passages["labels"])
    ppl_post = perplexity(torch.log_softmax(after, -1), passages["labels"])
    mask = passages["attention_mask"].bool()
    assert rows[0].pop("seconds") > 0
    assert rows[0] == pytest.approx({
        "batch_size": 3, "batch": 0, "edit_success": sum(holds) / len(holds),
        "ppl_drawdown": ppl_post / ppl_pre - 1, "ppl_post": ppl_post,
        "kl": kl_divergence(before, after, passages["attention_mask"]).item(),
        "top1_agreement": ((before.argmax(-1) == after.argmax(-1)) & mask).sum().item() / mask.sum().item(),
    }, rel=1e-6, abs=1e-9)
    assert rows[0]["top1_agreement"] < 1  # the step did change the passages' predictions


def test_neighbourhood_and_absolute_perplexity_per_row(model, tokenizer, ref, pairs):
    """Per row: neighbourhood = 1 - leakage (None without leak probes), and ppl_post is the edited whole model's
    perplexity on the reference passages, = the unedited perplexity x (1 + drawdown)."""
    procedure = FineTune("ft", 3.0, 3)
    rows = evaluate_edits(model, tokenizer, pairs, [procedure], ref, MAX_LEN, n_leak_probes=3)
    assert {"neighbourhood", "ppl_post"} <= set(COMPARED_METRICS)
    assert len({r["leakage"] for r in rows}) > 1 and any(0 < r["leakage"] < 1 for r in rows)  # not all the same
    passages = ref.inputs.batch
    kwargs = {"input_ids": passages["input_ids"], "attention_mask": passages["attention_mask"]}
    with torch.no_grad():
        ppl_unedited = perplexity(torch.log_softmax(model.model(**kwargs).logits, -1), passages["labels"])
    assert ref.ppl == pytest.approx(ppl_unedited, rel=1e-5)
    for row, pair in zip(rows, pairs):
        assert row["neighbourhood"] == pytest.approx(1 - row["leakage"], abs=1e-7)
        assert row["ppl_post"] == pytest.approx(ref.ppl * (1 + row["ppl_drawdown"]), rel=1e-9)
        edited = edit_model(model, model.prepare(encode_edits([pair], tokenizer, MAX_LEN)), procedure)
        with torch.no_grad():
            logits = functional_call(model.model, edited, args=(), kwargs=kwargs).logits
        assert row["ppl_post"] == pytest.approx(perplexity(torch.log_softmax(logits, -1), passages["labels"]), rel=1e-4)
        assert row["ppl_post"] != pytest.approx(ppl_unedited, rel=1e-4)  # the edit moved it
    alone = measure_edit(model, tokenizer, pairs[1], [], [procedure], ref, MAX_LEN)[0]
    assert alone["leakage"] is None and alone["neighbourhood"] is None


FLUENCY = Fluency(("The river flows", "Bread is baked from"), max_new_tokens=6)


def test_fluency_on_the_first_edits_only(model, tokenizer, ref, pairs):
    """With `n_fluency_edits=2` of 3 edits, fluency is measured after the first two (every procedure) and None
    after the third; each is the n-gram entropy of greedy generations from the prompts with that edit's own
    weights (lr=0: the unedited model's)."""
    edits = pairs[1:4]
    strong, none = FineTune("ft", 10.0, 3), FineTune("ft0", 0.0, 1)
    rows = evaluate_edits(model, tokenizer, edits, [strong, none], ref, MAX_LEN, fluency=FLUENCY, n_fluency_edits=2)
    assert [(r["edit_id"], r["procedure"]) for r in rows] == [(i, p) for i in (1, 2, 3) for p in ("ft", "ft0")]
    assert [r["fluency"] is not None for r in rows] == [True, True, True, True, False, False]
    unedited = mean_ngram_entropy(generate(model.model, tokenizer, list(FLUENCY.prompts), 6))
    measured = []
    for pair, row in zip(edits[:2], rows[::2]):
        edited = edit_model(model, model.prepare(encode_edits([pair], tokenizer, MAX_LEN)), strong)
        texts = generate(model.model, tokenizer, list(FLUENCY.prompts), 6, weights=edited)
        assert row["fluency"] == pytest.approx(mean_ngram_entropy(texts)), pair["id"]
        measured.append(row["fluency"])
    assert [r["fluency"] for r in rows[1:4:2]] == pytest.approx([unedited, unedited])
    # the check can fail: each edit's generations score differently, and differently from the unedited model's
    assert len({round(f, 6) for f in measured + [unedited]}) == 3
    assert evaluate_edits(model, tokenizer, edits[:1], [none], ref, MAX_LEN, fluency=FLUENCY)[0]["fluency"] is None  # n=0


def test_setting_of_reads_strength_grid_names():
    """`lr=<lr>,steps=<steps>` back to numbers, for every name `strength_grid` gives (per_edit carried through)."""
    assert setting_of("lr=0.05,steps=4") == {"lr": 0.05, "steps": 4}
    assert isinstance(setting_of("lr=0.05,steps=4")["steps"], int)
    lrs, steps = (1e-2, 0.03, 0.1, 1.0, 2.5e-4), (1, 4, 10)
    grid = strength_grid(lrs, steps, lambda lr: {"w": lr * 2}, per_edit=True)
    assert [setting_of(p.name) for p in grid] == [{"lr": lr, "steps": n} for lr in lrs for n in steps]
    assert [(p.lr, p.steps, p.per_edit) for p in grid] == [({"w": lr * 2}, n, True) for lr in lrs for n in steps]
    assert not any(p.per_edit for p in strength_grid(lrs, steps, float))

def test_held_out_is_a_seeded_prefix():
    """A smaller n takes a prefix of a larger n's sample; same seed same sample; the input is untouched."""
    rows = [{"id": i} for i in range(20)]
    original = copy.deepcopy(rows)
    small, large = held_out(rows, 5, seed=3), held_out(rows, 12, seed=3)
    assert large[:5] == small and len(large) == 12
    assert held_out(rows, 12, seed=3) == large
    assert held_out(rows, 12, seed=4) != large
    assert sorted(r["id"] for r in held_out(rows, 50, seed=3)) == list(range(20))
    assert rows == original


def test_edit_until_success_stops_when_the_edit_holds(model, tokenizer, pairs):
    """An edit that already holds takes 0 steps; a hard one stops at max_steps; a strong lr stops in between."""
    held = model.prepare(encode_edits([pairs[0]], tokenizer, MAX_LEN))  # the model's own prediction: holds already
    edited, steps = edit_with_steps(model, held, FineTune("until", 1.0, 5, until_success=True))
    assert steps == 0 and all(torch.equal(edited[n], model.model.get_parameter(n)) for n in model.names)
    hard = model.prepare(encode_edits([{**pairs[2], "new_name": "Newton"}], tokenizer, MAX_LEN))  # one token, reachable
    assert not edit_success(model.target_logits(hard), hard.targets).item()
    _, steps = edit_with_steps(model, hard, FineTune("until", 1e-6, 3, until_success=True))
    assert steps == 3  # a negligible lr never succeeds: capped at max_steps
    edited, steps = edit_with_steps(model, hard, FineTune("until", 1.0, 50, until_success=True))
    assert 1 <= steps < 50 and edit_success(model.target_logits(hard, edited), hard.targets).item()
    before = edit_with_steps(model, hard, FineTune("ft", 2.0, steps - 1))[0]
    assert not edit_success(model.target_logits(hard, before), hard.targets).item()  # it stopped at the first success


def test_until_success_rows_count_steps_only_when_successful(model, tokenizer, ref, pairs):
    rows = evaluate_edits(model, tokenizer, pairs[:3], [FineTune("until", 1e-6, 2, until_success=True)], ref, MAX_LEN)
    assert [r["edit_steps"] for r in rows] == [0, 2, 2]
    assert [r["steps_to_success"] for r in rows] == [0, None, None]
    assert [r["edit_success"] for r in rows] == [1.0, 0.0, 0.0]


def test_best_setting_prefers_low_drawdown_among_successful():
    grid = {"a": {"edit_success": 0.95, "ppl_drawdown": 0.2}, "b": {"edit_success": 0.9, "ppl_drawdown": 0.05},
            "c": {"edit_success": 0.5, "ppl_drawdown": 0.001}}
    assert best_setting(grid, 0.9) == "b"
    assert best_setting(grid, 0.99) == "a"  # none reaches it: the highest success
    assert best_setting(grid, 0.0) == "c"


@torch.no_grad()
def test_chunked_locality_matches_whole_batch_formulas(model, tokenizer, ref, pairs):
    """Chunk by chunk (here one passage at a time) gives the figures computed on all logits at once."""
    edited = edit_model(model, model.prepare(encode_edits([pairs[1]], tokenizer, MAX_LEN)), FineTune("ft", 100.0, 3))
    batch = ref.inputs.batch
    before, after = model.logits(ref.inputs), model.logits(ref.inputs, edited)
    post = torch.log_softmax(after, -1)
    expected = {
        "ppl_drawdown": perplexity(post, batch["labels"]) / perplexity(torch.log_softmax(before, -1), batch["labels"]) - 1,
        "ppl_post": perplexity(post, batch["labels"]),
        "kl": kl_divergence(before, after, batch["attention_mask"]).item(),
        "top1_agreement": ((before.argmax(-1) == after.argmax(-1)) & batch["attention_mask"].bool()).sum().item()
        / batch["attention_mask"].sum().item(),
    }
    assert expected["kl"] > 1e-4 and expected["top1_agreement"] < 1  # the edit did change something
    for chunk_tokens in (1, 10_000):
        assert locality(model, ref, edited, chunk_tokens) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_procedures_ending_on_the_same_weights_share_their_measurement(model, tokenizer, ref, pairs):
    """Edit-until-success that runs the fixed step count ends on the fixed-step edit's weights, bit for bit:
    its row then repeats that measurement (not recomputed); a different edit gets its own."""
    pair = {**pairs[2], "new_name": "Newton"}
    fixed, until = FineTune("ft", 1e-6, 2), FineTune("until", 1e-6, 2, until_success=True)
    edit = model.prepare(encode_edits([pair], tokenizer, MAX_LEN))
    assert same_weights(edit_model(model, edit, fixed), edit_model(model, edit, until))
    ft, until_row, strong = measure_edit(model, tokenizer, pair, [], [fixed, until, FineTune("ft", 1.0, 2)], ref, MAX_LEN)
    shared = [k for k in EDIT_METRICS if k not in ("sec_per_edit", "steps_to_success")]
    assert until_row["edit_steps"] == 2 and {k: until_row[k] for k in shared} == {k: ft[k] for k in shared}
    assert strong["kl"] > ft["kl"] and strong["logp_new_post"] > ft["logp_new_post"]
    alone = measure_edit(model, tokenizer, pair, [], [until], ref, MAX_LEN)[0]
    assert {k: alone[k] for k in shared} == {k: until_row[k] for k in shared}  # the same numbers when measured alone


def test_learned_inner_rates_scale_the_edit(tmp_path, tokenizer):
    """A checkpoint saved with MAML's learned per-tensor multipliers (as stages/editable.py writes them): each
    edited tensor's rate is lr * its multiplier, through `edit_learning_rates` and `LoadedModel.lr`, and one edit
    step with those rates is the hand-computed SGD step with each tensor's own rate. Without the file: lr."""
    edit = EditParams(blocks=1)
    lm = tiny_llama(vocab=len(tokenizer))
    names = edit_parameter_names(lm, edit)
    learned = {name: 0.5 + 1.5 * i for i, name in enumerate(names)}  # 0.5, 2.0, 3.5: not uniform
    inner_lr = 3e-2  # editable.inner_lr; the stage saves learned_lr / inner_lr, shape (1,)
    trained, plain = tmp_path / "editable", tmp_path / "plain"
    save_checkpoint(lm, tokenizer, trained)
    save_checkpoint(lm, tokenizer, plain)
    save_file({n: (torch.tensor(inner_lr * m) / inner_lr).reshape(1) for n, m in learned.items()}, trained / INNER_LR_SCALE_FILE)

    lr = 0.2
    rates = edit_learning_rates(trained, names, lr)
    assert set(rates) == set(names)
    assert {n: float(r) for n, r in rates.items()} == pytest.approx({n: lr * m for n, m in learned.items()}, rel=1e-6)
    assert edit_learning_rates(plain, names, lr) == {n: lr for n in names}
    models = {m.label: m for m in loaded_models({"editable": trained, "plain": plain}, edit, PASSAGES, MAX_LEN)}
    assert models["editable"].model.names == names
    assert {n: float(r) for n, r in models["editable"].lr(lr).items()} == pytest.approx({n: lr * m for n, m in learned.items()}, rel=1e-6)
    assert models["plain"].lr(lr) == {n: lr for n in names}

    loaded = models["editable"]
    pair = PAIRS[2]
    edited = edit_model(loaded.model, loaded.model.prepare(encode_edits([pair], tokenizer, MAX_LEN)), FineTune("ft", loaded.lr(lr), 1))
    uniform = edit_model(loaded.model, loaded.model.prepare(encode_edits([pair], tokenizer, MAX_LEN)), FineTune("ft", lr, 1))
    # By hand: the name tokens' mean cross-entropy on the loaded HF model, one SGD step per tensor.
    ids, labels = encode_edit(tokenizer, pair["prefix"], pair["new_name"], MAX_LEN)
    n_name = sum(label != -100 for label in labels)
    start = {n: loaded.model.model.get_parameter(n).detach().clone().requires_grad_(True) for n in names}
    logits = functional_call(loaded.model.model, start, args=(), kwargs={"input_ids": torch.tensor([ids])}).logits
    loss = F.cross_entropy(logits[0, -n_name - 1 : -1], torch.tensor(labels[-n_name:]))
    grads = dict(zip(names, torch.autograd.grad(loss, list(start.values()))))
    for name in names:
        expected = start[name].detach() - lr * learned[name] * grads[name]
        torch.testing.assert_close(edited[name], expected, rtol=1e-5, atol=1e-7, msg=lambda m: f"{name}: {m}")
        assert (uniform[name] - expected).abs().max() > 1e-3 * grads[name].abs().max()  # the multiplier matters
        assert torch.equal(loaded.model.model.get_parameter(name), lm.get_parameter(name))  # the model is untouched
