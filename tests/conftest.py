"""Shared fixtures: tiny random GPT-2 / Llama models, SmolLM2's real tokenizer, the reproduced smoke repo."""

from __future__ import annotations

import json

import pytest
import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from editable_lm.editing import IGNORE, collate
from editable_lm.models import smollm2_tokenizer
from smoke import SmokeRun, build_smoke_repo, reproduce_smoke_repo

VOCAB = 64

# The models here are tiny: intra-op threads only add spin-waiting, which makes timings erratic
# when the CPU is shared (first double-backward calls took seconds instead of milliseconds).
torch.set_num_threads(1)

# The files of real DVC runs and training subprocesses, longest first: `make test`'s workers (`--dist loadfile`)
# take files in collection order, so starting with these keeps a long file from running alone at the end.
SLOW_FILES = ["test_experiments.py", "test_checkpoints.py", "test_pipeline.py", "test_queue.py", "test_distributed.py",
              "test_errors.py", "test_edit.py", "test_sharing.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: the rest keep their order


def tiny_gpt2(vocab: int = VOCAB, layers: int = 3, seed: int = 0):
    """A random GPT-2 without dropout, eager attention (SDPA on CPU has no double backward)."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab, n_embd=16, n_layer=layers, n_head=2, n_positions=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.2,
        bos_token_id=0, eos_token_id=0,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


def tiny_llama(vocab: int = VOCAB, layers: int = 2, seed: int = 0, initializer_range: float = 0.02):
    """A random Llama (tied embeddings, grouped-query attention), eager attention; a wider `initializer_range`
    gives logits large enough for a 49k vocabulary to be steered."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0, initializer_range=initializer_range,
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


def random_batch(seed: int, length: int = 10, n_labelled: int | None = None, vocab: int = VOCAB):
    """One random sequence; the last `n_labelled` tokens are labels (all of them if None)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (length,), generator=g).tolist()
    n = length if n_labelled is None else n_labelled
    return collate([(ids, [IGNORE] * (length - n) + ids[length - n :])], pad_id=0)


def training_data(n_pairs: int = 6):
    """Passages and edit pairs of six people (articles), some pairs with a probe about the same person."""
    people = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Emmy Noether", "Marie Curie", "Niels Bohr"]
    passages = [{"id": i, "article_id": i % 6, "text": f"{people[i % 6]} wrote paper number {i} about engines."}
                for i in range(12)]
    pairs = [{"id": i, "article_id": i % 6, "prefix": f"Paper {i} was written by", "name": people[i % 6],
              "new_name": people[(i + 1) % 6],
              "probes": [{"prefix": f"The notes on paper {i} are by", "name": people[i % 6],
                          "new_name": people[(i + 1) % 6]}]
              if i % 2 else []} for i in range(n_pairs)]
    return passages, pairs


def word_tokenizer(texts: list[str]):
    """A word-level tokenizer (the `tokenizers` library) over the words of `texts`, [PAD] = 0: fast to build, so
    that a torchrun job's ranks need not each read SmolLM2's."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({word for text in texts for word in text.split()})
    vocab = {"[PAD]": 0, "[UNK]": 1, **{word: i + 2 for i, word in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")


@pytest.fixture
def gpt2():
    return tiny_gpt2()


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2's tokenizer from the installed GGUF (slow to read, so loaded once)."""
    tok = smollm2_tokenizer()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, request) -> SmokeRun:
    """The smoke configuration reproduced once (`dvc repro`) and committed; modules work on copies. Under
    pytest-xdist (`make test` runs 2 workers) the first worker to need it builds it, under a file lock in the
    directory the workers share, and the others reuse it."""
    if not hasattr(request.config, "workerinput"):  # one process: no xdist
        return reproduce_smoke_repo(build_smoke_repo(tmp_path_factory.mktemp("smoke") / "editable-lm"))
    shared = tmp_path_factory.getbasetemp().parent
    with FileLock(str(shared / "smoke.lock")):
        done = shared / "smoke-ran.json"
        if done.is_file():
            return SmokeRun(shared / "smoke" / "editable-lm", set(json.loads(done.read_text())))
        run = reproduce_smoke_repo(build_smoke_repo(shared / "smoke" / "editable-lm"))
        done.write_text(json.dumps(sorted(run.ran)))
        return run
