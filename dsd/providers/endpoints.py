"""Where a provider's requests go, and which API key may travel there.

A key is spent only at the endpoint it was given for. The provider keys of the environment
(``OPENAI_API_KEY``, ``GEMINI_API_KEY`` / ``GOOGLE_API_KEY``) go only to the provider's official
endpoint (exact scheme and host: ``https://api.openai.com``, ``https://generativelanguage.googleapis.com``):
a ``base_url`` typed into a ComfyUI node by any client of the server, or copied from a shared config,
must not be able to collect them. Any other endpoint gets a key only when its owner registered one:

- ``DSD_ENDPOINT_KEYS``: entries ``<endpoint>=<NAME OF THE VARIABLE HOLDING ITS KEY>``, separated by
  spaces, commas or newlines, e.g. ``DSD_ENDPOINT_KEYS="https://openrouter.ai/api/v1=OPENROUTER_API_KEY"``;
- a provider config's explicit ``api_key_env`` (the config file names both the URL and the key);
- in ComfyUI, the key store's endpoint entries (``nodes/keys.py``).

Endpoints are compared in one normal form: lower-case ``http``/``https`` scheme and host, no default
port, no trailing slash, no user name, query or fragment (:func:`normalise_endpoint`).

``DSD_ALLOWED_BASE_URLS`` (same separators), when set, is the list of endpoints a ComfyUI node may call
besides the official ones (:func:`check_allowed`).
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

ENDPOINT_KEYS_ENV = "DSD_ENDPOINT_KEYS"
ALLOWED_ENV = "DSD_ALLOWED_BASE_URLS"
# What each kind calls when no base_url is given; the SDKs are handed these explicitly, so a
# variable such as OPENAI_BASE_URL can never redirect an official key somewhere else.
OFFICIAL_ENDPOINTS = {"openai": "https://api.openai.com/v1", "gemini": "https://generativelanguage.googleapis.com"}
# The SDKs refuse to run without a key (google-genai would read GEMINI_API_KEY itself): an endpoint
# that gets no key is handed this placeholder, which is no secret. The OpenAI provider also drops
# the Authorization header from its chat requests (see openai_provider._send).
NO_KEY = "no-key"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SEPARATORS = re.compile(r"[\s,]+")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EndpointError(ValueError):
    """A base_url (or an entry of the endpoint variables) that cannot be used; the message says why."""


class EndpointNotAllowed(EndpointError):
    """The server's owner limited the endpoints (DSD_ALLOWED_BASE_URLS) and this one is not listed."""


def normalise_endpoint(url: str) -> str:
    """``scheme://host[:port][/path]`` of an http(s) URL; anything else raises :class:`EndpointError`."""
    if not isinstance(url, str) or not url.strip():
        raise EndpointError("base_url is empty")
    text = url.strip()
    shown = text[:80]
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        raise EndpointError(f"base_url {shown!r} contains spaces or control characters")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise EndpointError(f"base_url {shown!r} is not an http:// or https:// URL; "
                            "write e.g. http://127.0.0.1:8000/v1")
    if parts.username is not None or parts.password is not None:
        # Not echoed: the part before @ may be a password.
        raise EndpointError("base_url holds a user name or password (user:password@host); leave them out")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise EndpointError(f"base_url {shown!r} has a query (?...) or fragment (#...); give the server's "
                            "base address only, e.g. http://127.0.0.1:8000/v1")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise EndpointError(f"base_url {shown!r} has an invalid port") from None
    if not host:
        raise EndpointError(f"base_url {shown!r} names no host")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def origin(endpoint: str) -> str:
    """``scheme://host[:port]`` of a normalised endpoint."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


def endpoint_for(kind: str, base_url: str | None) -> str:
    """The normalised endpoint a provider of ``kind`` calls for ``base_url`` (None: the official one)."""
    return normalise_endpoint(base_url) if base_url else OFFICIAL_ENDPOINTS[kind]


def is_official(kind: str, endpoint: str) -> bool:
    """True when ``endpoint`` is on the provider's official scheme + host (the only home of its keys)."""
    return origin(endpoint) == origin(OFFICIAL_ENDPOINTS[kind])


def _entries(variable: str) -> list[str]:
    return [e for e in _SEPARATORS.split(os.environ.get(variable, "")) if e]


def registered_key_variable(endpoint: str) -> str | None:
    """The variable that ``DSD_ENDPOINT_KEYS`` names for ``endpoint`` (exact normalised match), or None."""
    for number, entry in enumerate(_entries(ENDPOINT_KEYS_ENV), start=1):
        url, sep, name = entry.rpartition("=")
        if not sep or not _VARIABLE.fullmatch(name):
            raise EndpointError(f"{ENDPOINT_KEYS_ENV} entry {number} is not <endpoint>=<VARIABLE_NAME> (the name "
                                "of the environment variable holding that endpoint's key, not the key itself)")
        try:
            registered = normalise_endpoint(url)
        except EndpointError as exc:
            raise EndpointError(f"{ENDPOINT_KEYS_ENV} entry {number}: {exc}") from None
        if registered == endpoint:
            return name
    return None


def registered_endpoints() -> list[str]:
    """The endpoints ``DSD_ENDPOINT_KEYS`` lists (URLs only)."""
    return [normalise_endpoint(e.rpartition("=")[0]) for e in _entries(ENDPOINT_KEYS_ENV) if "=" in e]


def allowed_endpoints() -> set[str] | None:
    """The endpoints ``DSD_ALLOWED_BASE_URLS`` lists; None when it is not set (any http(s) endpoint)."""
    entries = _entries(ALLOWED_ENV)
    if not entries:
        return None
    try:
        return {normalise_endpoint(e) for e in entries}
    except EndpointError as exc:
        raise EndpointError(f"{ALLOWED_ENV}: {exc}") from None


def check_allowed(kind: str, endpoint: str) -> None:
    """Refuse ``endpoint`` when the owner set ``DSD_ALLOWED_BASE_URLS`` and did not list it.

    The official endpoints are always allowed: they receive only their own provider's keys.
    """
    allowed = allowed_endpoints()
    if allowed is None or is_official(kind, endpoint) or endpoint in allowed:
        return
    raise EndpointNotAllowed(f"base_url {endpoint} is not one of the endpoints this server's owner allows "
                             f"({ALLOWED_ENV}); leave base_url empty for the provider's public API or ask the "
                             "owner to add it")
