"""An unreachable hub is a one-line error pointing to the offline defaults, not a minute of retries."""

import pytest

from editable_lm.corpus import load_passages
from editable_lm.errors import EditLMError
from editable_lm.models import build_base_model
from editable_lm.params import DataParams


@pytest.fixture
def closed_hub(monkeypatch):
    # Port 9 (discard) on loopback: nothing listens, so the connection is refused at once.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_unknown_model_names_offline_default(closed_hub):
    with pytest.raises(EditLMError, match=r"model.name 'no-such/model'.*unreachable.*model.name=smollm2-135m"):
        build_base_model("no-such/model")


def test_wikitext_names_offline_default(closed_hub):
    with pytest.raises(EditLMError, match=r"data.source 'wikitext-2-raw-v1'.*unreachable.*data.source=wiki-vital"):
        load_passages(DataParams(source="wikitext-2-raw-v1"))
