"""Server-side store of the prompt enhancer's API keys, and the pack's ``/dsd/keys`` routes.

ComfyUI serves ``comfy.settings.json`` to every client (``GET /settings``, ``GET /userdata/...``), and
people run it with ``--listen 0.0.0.0`` on shared machines, so a key kept as a ComfyUI setting leaks.
Keys entered in the UI live instead in one JSON file (mode 0600 from its first byte, folder 0700)
outside every folder ComfyUI serves; the routes accept a key and only ever answer "set" / "not set".
Environment variables still win over the store. A key already sitting in ``comfy.settings.json``
(the pack's old setting ids) is moved into the store when the pack loads.

Where a key may go (``dsd.providers.endpoints``): a provider key (``{"provider": "openai"}``) only to
that provider's official endpoint; an endpoint key (``{"endpoint": "http://10.0.0.5:8000/v1"}``) only
to that exact endpoint. Any other base_url a graph names is called without a key.

Who may change keys: a request from the ComfyUI page itself (``Origin`` equal to the server's
``Host``; ``null``, foreign and missing Origins are refused; JSON bodies only, so no form or
``text/plain`` post gets through without a CORS preflight) and from the machine running ComfyUI
(a loopback peer, with the server named by an IP address or ``localhost`` against DNS rebinding),
unless the owner allows other machines with ``DSD_KEYS_REMOTE``.

Store location: ``$DSD_KEY_STORE`` (a file path), else ``$XDG_CONFIG_HOME/comfyui-dsd/api_keys.json``
(``~/.config/...``; ``%APPDATA%\\comfyui-dsd\\api_keys.json`` on Windows). Read at every use, never
cached, so a changed or cleared key takes effect at the next execution; the location rule (not in a
folder ComfyUI serves) is checked at load and at every read. The keys are server-wide: with
``--multi-user`` every user of the server shares them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..dsd.io import atomic_path
from ..dsd.providers import endpoints
from ..dsd.providers.config import KEY_ENV_VARS

logger = logging.getLogger(__name__)

STORE_ENV = "DSD_KEY_STORE"
STORE_NAME = "api_keys.json"
PROVIDERS = ("openai", "gemini")
# Where earlier versions of the pack kept keys: ComfyUI settings, served to every client.
LEGACY_SETTING_IDS = {"openai": "DSD.OpenAIApiKey", "gemini": "DSD.GeminiApiKey"}
SETTINGS_FILE = "comfy.settings.json"
# Real keys are 39 (Gemini) to ~200 (OpenAI project keys) characters; gateway tokens (JWTs) run longer.
MAX_KEY_LENGTH = 4096
MAX_BODY_BYTES = 16 * 1024
ROUTE_PREFIX = "/dsd/keys"
UI_HINT = "ComfyUI settings > DSD > Prompt enhancer"
# "1": other machines may change keys too; names (comma-separated) are host names they may use for
# the server besides IP addresses and localhost.
REMOTE_ENV = "DSD_KEYS_REMOTE"
STORE_VERSION = 2
_REPORTED: set[str] = set()  # store problems already logged (one line each, not one per execution)


class KeyStoreError(RuntimeError):
    """The key store cannot be used as configured (bad location, unreadable file)."""


class KeyValidationError(ValueError):
    """A request to the key routes is malformed; the message says what to send instead."""

    status = 400


class BodyTooLarge(KeyValidationError):
    status = 413


# -- location ----------------------------------------------------------------------------------
def store_path() -> Path:
    """Where the keys live: ``$DSD_KEY_STORE``, else the user's config folder (never a ComfyUI folder)."""
    override = os.environ.get(STORE_ENV, "").strip()
    if override:
        return Path(override).expanduser().absolute()
    if os.name == "nt" and os.environ.get("APPDATA"):
        base = Path(os.environ["APPDATA"])
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return (base / "comfyui-dsd" / STORE_NAME).absolute()


def served_directories() -> list[Path]:
    """Folders ComfyUI hands out over HTTP (/userdata, /view, model listings, /extensions, the frontend)."""
    try:
        import folder_paths
    except ImportError:  # outside ComfyUI nothing is served
        return []
    dirs = [folder_paths.get_user_directory(), folder_paths.get_input_directory(),
            folder_paths.get_output_directory(), folder_paths.get_temp_directory(), folder_paths.models_dir]
    for paths, _ in folder_paths.folder_names_and_paths.values():
        dirs.extend(paths)
    with contextlib.suppress(ImportError, AttributeError):
        import nodes as comfy_nodes  # ComfyUI's nodes.py: the web folders of every loaded pack

        dirs.extend(comfy_nodes.EXTENSION_WEB_DIRS.values())
    with contextlib.suppress(ImportError, AttributeError):
        from server import PromptServer

        dirs.append(PromptServer.instance.web_root)
    return [Path(d).resolve() for d in dirs if d]


def check_location(path: Path) -> None:
    """Refuse a store inside a served folder: there the file itself would be the leak."""
    resolved = path.resolve()
    for served in served_directories():
        if resolved == served or served in resolved.parents:
            raise KeyStoreError(
                f"the DSD key store {path} is inside {served}, which ComfyUI serves over HTTP, so the pack "
                f"does not use it; set the environment variable {STORE_ENV} to a file outside ComfyUI's user, "
                "input, output, temp and models folders (e.g. ~/.config/comfyui-dsd/api_keys.json), move the "
                "keys there (or enter them again) and restart ComfyUI"
            )


def _report(message: str) -> None:
    """Log a store problem once per process (a read happens at every execution)."""
    if message not in _REPORTED:
        _REPORTED.add(message)
        logger.error("DSD: %s", message)


def _is_dedicated(folder: Path, store_name: str) -> bool:
    """True when ``folder`` holds nothing but the store and its temporaries: safe to chmod."""
    with contextlib.suppress(OSError):
        return all(n == store_name or (n.startswith(f".{store_name}.") and n.endswith(".tmp"))
                   for n in os.listdir(folder))
    return False


def _private_folder(folder: Path, store_name: str, *, writing: bool) -> None:
    """The store's folder must be 0700: created so, tightened when it is the store's own folder,
    refused for writing (with the reason) when it is a shared one such as a home folder or /tmp."""
    if writing:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        mode = stat.S_IMODE(folder.stat().st_mode)
    except FileNotFoundError:
        return
    if not mode & 0o077 or os.name == "nt":
        return
    if _is_dedicated(folder, store_name):
        try:
            os.chmod(folder, 0o700)
        except OSError as exc:
            raise KeyStoreError(f"the folder {folder} of the DSD key store is mode {mode:o} and cannot be made "
                                f"private ({type(exc).__name__}); run chmod 700 {folder}") from None
        logger.warning("DSD: the folder %s of the key store was mode %o (other users could list it); it is "
                       "now 0700", folder, mode)
        return
    message = (f"the folder {folder} of the DSD key store is open to other users (mode {mode:o}) and holds other "
               f"files, so the pack does not change its mode; run chmod 700 {folder} or set {STORE_ENV} to a "
               "file in a folder of its own (e.g. ~/.config/comfyui-dsd/api_keys.json)")
    if writing:
        raise KeyStoreError(message)
    _report(message)  # reading: the file itself is 0600, the keys stay usable


# -- the store ---------------------------------------------------------------------------------
@dataclass
class StoredKeys:
    """The store's content: provider keys (official endpoints) and endpoint keys (exact endpoints)."""

    providers: dict[str, str] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)


class KeyStore:
    """The keys file. Every call reads or writes the file at ``store_path()``; never log a key."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path or store_path()

    def _checked_path(self, *, writing: bool) -> Path:
        path = self.path
        try:
            check_location(path)
        except KeyStoreError as exc:
            _report(str(exc))
            raise
        _private_folder(path.parent, path.name, writing=writing)
        return path

    def read(self) -> StoredKeys:
        path = self._checked_path(writing=False)
        try:
            info = path.stat()
        except FileNotFoundError:
            return StoredKeys()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("DSD key store %s was readable by other users; restricting it to mode 0600", path)
            os.chmod(path, 0o600)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            # The file holds secrets: name it and the error type, never its text.
            raise KeyStoreError(
                f"cannot read the DSD key store {path} ({type(exc).__name__}); delete the file and enter "
                f"the keys again in {UI_HINT}"
            ) from None
        keys = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(keys, dict):
            raise KeyStoreError(f"the DSD key store {path} is not a keys file; delete it and enter the keys again")
        by_endpoint = data.get("endpoints") or {}
        return StoredKeys(
            providers={k: v for k, v in keys.items() if k in PROVIDERS and isinstance(v, str) and v},
            endpoints={k: v for k, v in by_endpoint.items() if isinstance(v, str) and v} if isinstance(
                by_endpoint, dict) else {},
        )

    def _write(self, keys: StoredKeys) -> None:
        path = self._checked_path(writing=True)
        content = {"version": STORE_VERSION, "keys": keys.providers, "endpoints": keys.endpoints}
        with atomic_path(path, secret=True) as tmp:  # 0600 before the first byte
            tmp.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def _change(self, change: Any) -> bool:
        """Apply ``change(keys) -> bool`` under the lock; write when it reports a change."""
        with self._lock:
            keys = self.read()
            changed = change(keys)
            if changed:
                self._write(keys)
            return changed

    def get(self, provider: str) -> str | None:
        return self.read().providers.get(provider)

    def set(self, provider: str, key: str) -> None:
        def change(keys: StoredKeys) -> bool:
            keys.providers[provider] = key
            return True

        self._change(change)

    def clear(self, provider: str) -> bool:
        """Forget ``provider``'s key; True when there was one."""
        return self._change(lambda keys: keys.providers.pop(provider, None) is not None)

    def get_endpoint(self, endpoint: str) -> str | None:
        return self.read().endpoints.get(endpoint)

    def set_endpoint(self, endpoint: str, key: str) -> None:
        """Register ``key`` for the normalised ``endpoint`` (sent there and nowhere else)."""
        def change(keys: StoredKeys) -> bool:
            keys.endpoints[endpoint] = key
            return True

        self._change(change)

    def clear_endpoint(self, endpoint: str) -> bool:
        return self._change(lambda keys: keys.endpoints.pop(endpoint, None) is not None)

    def status(self, *, with_endpoints: bool = False) -> dict[str, Any]:
        """What any client may know: per provider "set" / "not set", which env variables are set; the
        registered endpoints (URLs, never keys) only for a client that may manage keys."""
        keys = self.read()
        out: dict[str, Any] = {p: "set" if p in keys.providers else "not set" for p in PROVIDERS}
        out["environment"] = {p: env_key_name(p) for p in PROVIDERS}
        if with_endpoints:
            registered: list[str] = []
            with contextlib.suppress(endpoints.EndpointError):  # a bad entry is reported where it is used
                registered = endpoints.registered_endpoints()
            out["endpoints"] = {"stored": sorted(keys.endpoints), "environment": registered}
        return out


STORE = KeyStore()


def env_key_name(provider: str) -> str | None:
    """The first of the provider's environment variables that is set (its name, never its value)."""
    return next((name for name in KEY_ENV_VARS[provider] if os.environ.get(name)), None)


def resolve_key(kind: str, base_url: str | None = None) -> str | None:
    """The key that may go to ``base_url`` (None: the official endpoint), or None: send none.

    An endpoint registered in ``DSD_ENDPOINT_KEYS`` gets its variable's key; one registered in the
    store its stored key; the official endpoint the provider key (environment first, then store).
    Nothing else gets a key. Raises ``EndpointError`` for a malformed base_url.
    """
    endpoint = endpoints.endpoint_for(kind, base_url)
    variable = endpoints.registered_key_variable(endpoint)
    if variable is not None:
        return os.environ.get(variable) or None  # unset: the provider layer names the variable
    official = endpoints.is_official(kind, endpoint)
    name = env_key_name(kind)
    if official and name is not None:
        return os.environ[name]
    keys = STORE.read()
    return keys.endpoints.get(endpoint) or (keys.providers.get(kind) if official else None)


def validate_provider(value: Any) -> str:
    if value not in PROVIDERS:
        raise KeyValidationError(f"provider must be one of {list(PROVIDERS)}, got {str(value)[:40]!r}")
    return value


def validate_endpoint(value: Any) -> str:
    """The normalised endpoint a key is registered for; the official ones take provider keys instead."""
    try:
        endpoint = endpoints.normalise_endpoint(value if isinstance(value, str) else "")
    except endpoints.EndpointError as exc:
        raise KeyValidationError(f'"endpoint": {exc}') from None
    for kind in PROVIDERS:
        if endpoints.is_official(kind, endpoint):
            raise KeyValidationError(f'{endpoint} is the official {kind} endpoint: set its key with '
                                     f'{{"provider": "{kind}", "key": "..."}}')
    return endpoint


def validate_key(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise KeyValidationError('"key" must be a non-empty string: paste the API key')
    key = value.strip()
    if len(key) > MAX_KEY_LENGTH:
        raise KeyValidationError(f'"key" is {len(key)} characters long; an API key has at most {MAX_KEY_LENGTH}')
    if not all(33 <= ord(c) < 127 for c in key):
        # Keys travel in HTTP headers; a space usually means "Bearer " or two keys were pasted.
        raise KeyValidationError('"key" may only hold printable ASCII without spaces; paste the bare key '
                                 '(without "Bearer ")')
    return key


# -- migration ---------------------------------------------------------------------------------
def migrate_settings(user_dir: str | os.PathLike[str], store: KeyStore = STORE) -> int:
    """Move keys out of every user's comfy.settings.json into the store; returns how many were moved."""
    root = Path(user_dir)
    if not root.is_dir():
        return 0
    moved = 0
    for settings_path in sorted(root.glob(f"*/{SETTINGS_FILE}")):
        if settings_path.parent.name.startswith("__"):  # ComfyUI's system users hold no settings
            continue
        moved += _migrate_file(settings_path, store)
    return moved


def _migrate_file(settings_path: Path, store: KeyStore) -> int:
    try:
        settings = json.loads(settings_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return 0  # ComfyUI itself reports a corrupt settings file
    if not isinstance(settings, dict):
        return 0
    found = {p: settings[sid] for p, sid in LEGACY_SETTING_IDS.items() if sid in settings}
    if not found:
        return 0
    moved = 0
    for provider, value in found.items():
        key = value.strip() if isinstance(value, str) else ""
        if key and store.get(provider) is None:
            store.set(provider, key)
            moved += 1
            logger.warning("DSD: moved the %s API key out of %s (setting %s, readable by every client of the "
                           "server) into the key store %s", provider, settings_path, LEGACY_SETTING_IDS[provider],
                           store.path)
        elif key:
            logger.warning("DSD: removed the %s API key from %s (setting %s); the key store %s already holds "
                           "one, which stays in use", provider, settings_path, LEGACY_SETTING_IDS[provider],
                           store.path)
        del settings[LEGACY_SETTING_IDS[provider]]
    mode = stat.S_IMODE(settings_path.stat().st_mode)
    with atomic_path(settings_path) as tmp:
        os.chmod(tmp, mode)
        tmp.write_text(json.dumps(settings, indent=4), encoding="utf-8")  # ComfyUI's own layout
    return moved


# -- routes ------------------------------------------------------------------------------------
class Refused(KeyValidationError):
    """A key change from a client that may not make one (foreign page, other machine)."""

    status = 403


class NotJSON(KeyValidationError):
    """A form or text/plain body: what a foreign page can send without a CORS preflight."""

    status = 415


def _error(status: int, message: str) -> Any:
    from aiohttp import web

    return web.json_response({"error": message}, status=status)


def _host_name(request: Any) -> str:
    return (urlsplit("//" + request.headers.get("Host", "")).hostname or "").lower()


def _may_manage(request: Any) -> bool:
    """A client on this machine (or any, with DSD_KEYS_REMOTE), calling the server by a name that
    cannot be an attacker's DNS name rebound to it: an IP address, localhost, or a name the owner listed."""
    setting = os.environ.get(REMOTE_ENV, "").strip()
    names = {n.lower() for n in re.split(r"[\s,]+", setting) if n and n not in {"0", "1"}}
    remote = bool(setting) and setting != "0"
    host = _host_name(request)
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = host == "localhost"
    if not (literal or host in names):
        return False
    if remote:
        return True
    try:
        peer = ipaddress.ip_address(request.remote or "")
    except ValueError:  # a unix socket or no peer at all: not known to be this machine
        return False
    # A dual-stack listener ("::") sees IPv4 clients as ::ffff:a.b.c.d.
    mapped = getattr(peer, "ipv4_mapped", None)
    return (mapped or peer).is_loopback


def check_change_allowed(request: Any, *, json_body: bool) -> None:
    """Raise :class:`Refused` unless ``request`` may change keys (see the module docstring)."""
    origin = request.headers.get("Origin", "").strip()
    if not origin or origin.lower() == "null":
        raise Refused("key changes are accepted only from the ComfyUI page itself, and this request has no "
                      "Origin (or Origin: null, a sandboxed page); a script must send the header "
                      "Origin: <the server's own URL>")
    parsed = urlsplit(origin)
    if parsed.scheme not in ("http", "https") or parsed.netloc.lower() != request.headers.get("Host", "").lower():
        raise Refused(f"key changes are accepted only from the ComfyUI page itself; Origin {origin[:80]!r} is "
                      "another site")
    if json_body and request.content_type != "application/json":
        raise NotJSON("send the body as JSON with the header Content-Type: application/json")
    if not _may_manage(request):
        raise Refused("key changes are accepted only on the machine running ComfyUI (from a loopback address, "
                      f"with the server called by its IP address or localhost); the owner can allow other "
                      f"machines with the environment variable {REMOTE_ENV}=1 (see the README)")


async def _body(request: Any, fields: set[str]) -> dict[str, Any]:
    check_change_allowed(request, json_body=True)
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise BodyTooLarge(f"the request body is over {MAX_BODY_BYTES} bytes")
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise BodyTooLarge(f"the request body is over {MAX_BODY_BYTES} bytes")
    example = json.dumps({f: "..." for f in sorted(fields - {"endpoint"})})
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeyValidationError(f"the body must be a JSON object like {example}") from None
    if not isinstance(body, dict):
        raise KeyValidationError(f"the body must be a JSON object like {example}")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise KeyValidationError(f"unknown field(s) {unknown}; send a JSON object like {example}")
    if ("provider" in body) == ("endpoint" in body):
        raise KeyValidationError('name either "provider" (openai or gemini: its official endpoint) or '
                                 '"endpoint" (the exact base_url that may receive this key)')
    return body


async def _answer(request: Any, action: Any) -> Any:
    """Run a store action off the event loop (it fsyncs) and answer with the status, or a clear error."""
    from aiohttp import web

    try:
        await asyncio.to_thread(action)
        status = await asyncio.to_thread(STORE.status, with_endpoints=_may_manage(request))
        return web.json_response(status)
    except (KeyStoreError, OSError) as exc:
        return _error(500, f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc))


def _set_action(body: dict[str, Any]) -> Any:
    key = validate_key(body.get("key"))
    if "endpoint" in body:
        endpoint = validate_endpoint(body["endpoint"])
        logger.info("DSD: storing a key for the endpoint %s in %s", endpoint, STORE.path)
        return lambda: STORE.set_endpoint(endpoint, key)
    provider = validate_provider(body.get("provider"))
    logger.info("DSD: storing the %s API key in %s", provider, STORE.path)
    return lambda: STORE.set(provider, key)


def _clear_action(body: dict[str, Any]) -> Any:
    if "endpoint" in body:
        endpoint = validate_endpoint(body["endpoint"])
        return lambda: _clear_endpoint(endpoint)
    provider = validate_provider(body.get("provider"))
    return lambda: _clear(provider)


def register_routes(routes: Any) -> bool:
    """Add the key routes to ComfyUI's route table (also served under /api); False if already there."""
    if any(getattr(r, "path", None) == ROUTE_PREFIX for r in routes):
        return False

    @routes.get(ROUTE_PREFIX)
    async def key_status(request: Any) -> Any:
        return await _answer(request, lambda: None)

    @routes.post(f"{ROUTE_PREFIX}/set")
    async def set_key(request: Any) -> Any:
        try:
            action = _set_action(await _body(request, {"provider", "endpoint", "key"}))
        except KeyValidationError as exc:
            return _error(exc.status, str(exc))
        return await _answer(request, action)

    @routes.post(f"{ROUTE_PREFIX}/clear")
    async def clear_key(request: Any) -> Any:
        try:
            action = _clear_action(await _body(request, {"provider", "endpoint"}))
        except KeyValidationError as exc:
            return _error(exc.status, str(exc))
        return await _answer(request, action)

    @routes.delete(f"{ROUTE_PREFIX}/{{provider}}")
    async def delete_key(request: Any) -> Any:
        try:
            check_change_allowed(request, json_body=False)
            provider = validate_provider(request.match_info["provider"])
        except KeyValidationError as exc:
            return _error(exc.status, str(exc))
        return await _answer(request, lambda: _clear(provider))

    return True


def _clear(provider: str) -> None:
    if STORE.clear(provider):
        logger.info("DSD: cleared the %s API key from %s", provider, STORE.path)


def _clear_endpoint(endpoint: str) -> None:
    if STORE.clear_endpoint(endpoint):
        logger.info("DSD: cleared the key of the endpoint %s from %s", endpoint, STORE.path)


def install() -> None:
    """At pack load: register the routes on ComfyUI's server and move keys out of the settings files."""
    try:
        from server import PromptServer

        instance = PromptServer.instance
    except (ImportError, AttributeError):
        logger.info("DSD: no ComfyUI server instance; the key routes are not registered")
        return
    register_routes(instance.routes)
    with contextlib.suppress(KeyStoreError):  # logged by the check; the routes and nodes report it too
        STORE.read()  # the location and folder rules, at load
    import folder_paths

    try:
        migrate_settings(folder_paths.get_user_directory())
    except (KeyStoreError, OSError) as exc:
        logger.warning("DSD: could not move API keys out of ComfyUI's settings files (%s); they stay readable "
                       "through GET /settings until this is fixed", exc)
