"""Server-side store of the prompt enhancer's API keys, and the pack's ``/dsd/keys`` routes.

ComfyUI serves ``comfy.settings.json`` to every client (``GET /settings``, ``GET /userdata/...``), and
people run it with ``--listen 0.0.0.0`` on shared machines, so a key kept as a ComfyUI setting leaks.
Keys entered in the UI live instead in one JSON file (mode 0600, folder 0700) outside every folder
ComfyUI serves; the routes accept a key and only ever answer "set" / "not set". Environment
variables still win over the store. A key already sitting in ``comfy.settings.json`` (the pack's
old setting ids) is moved into the store when the pack loads.

Store location: ``$DSD_KEY_STORE`` (a file path), else ``$XDG_CONFIG_HOME/comfyui-dsd/api_keys.json``
(``~/.config/...``; ``%APPDATA%\\comfyui-dsd\\api_keys.json`` on Windows). Read at every use, never
cached, so a changed or cleared key takes effect at the next execution. The keys are server-wide:
with ``--multi-user`` every user of the server shares them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any

from ..dsd.io import atomic_path
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
                f"the DSD key store {path} is inside {served}, which ComfyUI serves over HTTP; set the "
                f"environment variable {STORE_ENV} to a file outside ComfyUI's user, input, output, temp "
                "and models folders (e.g. ~/.config/comfyui-dsd/api_keys.json) and restart ComfyUI"
            )


# -- the store ---------------------------------------------------------------------------------
class KeyStore:
    """The keys file. Every call reads or writes the file at ``store_path()``; never log a key."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path or store_path()

    def _read(self) -> dict[str, str]:
        path = self.path
        try:
            info = path.stat()
        except FileNotFoundError:
            return {}
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
        return {k: v for k, v in keys.items() if k in PROVIDERS and isinstance(v, str) and v}

    def _write(self, keys: dict[str, str]) -> None:
        path = self.path
        check_location(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with atomic_path(path) as tmp:
            os.chmod(tmp, 0o600)  # before the secret is in it
            tmp.write_text(json.dumps({"version": 1, "keys": keys}, indent=2, sort_keys=True) + "\n",
                           encoding="utf-8")
        os.chmod(path, 0o600)  # in case the atomic writer ever applies the umask on rename

    def get(self, provider: str) -> str | None:
        return self._read().get(provider)

    def set(self, provider: str, key: str) -> None:
        with self._lock:
            keys = self._read()
            keys[provider] = key
            self._write(keys)

    def clear(self, provider: str) -> bool:
        """Forget ``provider``'s key; True when there was one."""
        with self._lock:
            keys = self._read()
            if keys.pop(provider, None) is None:
                return False
            self._write(keys)
            return True

    def status(self) -> dict[str, Any]:
        """What any client may know: per provider "set" / "not set", and which env variables are set."""
        keys = self._read()
        out: dict[str, Any] = {p: "set" if p in keys else "not set" for p in PROVIDERS}
        out["environment"] = {p: env_key_name(p) for p in PROVIDERS}
        return out


STORE = KeyStore()


def env_key_name(provider: str) -> str | None:
    """The first of the provider's environment variables that is set (its name, never its value)."""
    return next((name for name in KEY_ENV_VARS[provider] if os.environ.get(name)), None)


def resolve_key(provider: str) -> str | None:
    """The key to use: the environment first, then the store; None when neither has one."""
    name = env_key_name(provider)
    if name is not None:
        return os.environ[name]
    return STORE.get(provider)


def validate_provider(value: Any) -> str:
    if value not in PROVIDERS:
        raise KeyValidationError(f"provider must be one of {list(PROVIDERS)}, got {str(value)[:40]!r}")
    return value


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
def _error(status: int, message: str) -> Any:
    from aiohttp import web

    return web.json_response({"error": message}, status=status)


async def _body(request: Any, fields: set[str]) -> dict[str, Any]:
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise BodyTooLarge(f"the request body is over {MAX_BODY_BYTES} bytes")
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise BodyTooLarge(f"the request body is over {MAX_BODY_BYTES} bytes")
    example = json.dumps({f: "..." for f in sorted(fields)})
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeyValidationError(f"the body must be a JSON object like {example}") from None
    if not isinstance(body, dict):
        raise KeyValidationError(f"the body must be a JSON object like {example}")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise KeyValidationError(f"unknown field(s) {unknown}; send a JSON object like {example}")
    return body


async def _answer(action: Any) -> Any:
    """Run a store action off the event loop (it fsyncs) and answer with the status, or a clear error."""
    from aiohttp import web

    try:
        await asyncio.to_thread(action)
        return web.json_response(await asyncio.to_thread(STORE.status))
    except (KeyStoreError, OSError) as exc:
        return _error(500, f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc))


def register_routes(routes: Any) -> bool:
    """Add the key routes to ComfyUI's route table (also served under /api); False if already there."""
    if any(getattr(r, "path", None) == ROUTE_PREFIX for r in routes):
        return False

    @routes.get(ROUTE_PREFIX)
    async def key_status(request: Any) -> Any:
        return await _answer(lambda: None)

    @routes.post(f"{ROUTE_PREFIX}/set")
    async def set_key(request: Any) -> Any:
        try:
            body = await _body(request, {"provider", "key"})
            provider, key = validate_provider(body.get("provider")), validate_key(body.get("key"))
        except KeyValidationError as exc:
            return _error(exc.status, str(exc))
        logger.info("DSD: storing the %s API key in %s", provider, STORE.path)
        return await _answer(lambda: STORE.set(provider, key))

    @routes.post(f"{ROUTE_PREFIX}/clear")
    async def clear_key(request: Any) -> Any:
        try:
            provider = validate_provider((await _body(request, {"provider"})).get("provider"))
        except KeyValidationError as exc:
            return _error(exc.status, str(exc))
        return await _answer(lambda: _clear(provider))

    @routes.delete(f"{ROUTE_PREFIX}/{{provider}}")
    async def delete_key(request: Any) -> Any:
        try:
            provider = validate_provider(request.match_info["provider"])
        except KeyValidationError as exc:
            return _error(exc.status, str(exc))
        return await _answer(lambda: _clear(provider))

    return True


def _clear(provider: str) -> None:
    if STORE.clear(provider):
        logger.info("DSD: cleared the %s API key from %s", provider, STORE.path)


def install() -> None:
    """At pack load: register the routes on ComfyUI's server and move keys out of the settings files."""
    try:
        from server import PromptServer

        instance = PromptServer.instance
    except (ImportError, AttributeError):
        logger.info("DSD: no ComfyUI server instance; the key routes are not registered")
        return
    register_routes(instance.routes)
    import folder_paths

    try:
        migrate_settings(folder_paths.get_user_directory())
    except (KeyStoreError, OSError) as exc:
        logger.warning("DSD: could not move API keys out of ComfyUI's settings files (%s); they stay readable "
                       "through GET /settings until this is fixed", exc)
