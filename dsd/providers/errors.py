"""Error classes of the provider layer.

Every message says what went wrong and how to fix it, and never contains an API key:
text that came from a server is passed through :func:`redact` before it lands in a message.
"""

from __future__ import annotations


class ProviderError(RuntimeError):
    """Base class of every failure the provider layer reports."""


class ProviderAuthError(ProviderError):
    """Missing or rejected API key; the message names the environment variable to set."""


class ProviderUnavailable(ProviderError):
    """Server offline, timing out or failing after all retries; the message names the URL and tries."""


class ProviderResponseError(ProviderError):
    """The answer was malformed (not JSON, or JSON that does not match the requested schema)."""


class ProviderRefusal(ProviderError):
    """The model refused to answer or the answer was blocked by a safety filter."""


def redact(text: str, secret: str | None) -> str:
    """Remove ``secret`` (and its obvious fragments) from ``text``."""
    if not secret:
        return text
    text = text.replace(secret, "***")
    # Servers often echo a key half-masked ("sk-abc...xyz1234"): drop long recognisable pieces too.
    if len(secret) >= 16:
        for piece in (secret[:8], secret[-8:]):
            text = text.replace(piece, "***")
    return text
