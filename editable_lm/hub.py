"""Fail fast, with advice, when the Hugging Face hub cannot be reached (its client retries for a minute)."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from editable_lm.errors import EditLMError


def require_hub(what: str, offline_default: str) -> None:
    """Raise a one-line error naming `what` and the offline default if the hub is unreachable."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return  # the local cache is all there is; the loader reports what is missing
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=5).close()
    except OSError:
        raise EditLMError(f"{what}: the Hugging Face hub ({url.hostname}) is unreachable; use the offline default {offline_default}") from None
