"""Find or prepare the ComfyUI host that the tests, benchmarks and the GPU bundle run against.

One rule, in this order (the first that holds wins):
1. ``COMFYUI_PATH``: a ComfyUI checkout you point at (any version you want to test against);
2. the ComfyUI that contains this pack (``<ComfyUI>/custom_nodes/<this repo>``);
3. the prepared cache inside this repo, ``.cache/ComfyUI`` (git-ignored);
4. ``prepare``: build that cache from the pinned upstream release: ComfyUI v0.8.0 and ComfyUI-GGUF
   (into the cached host's ``custom_nodes/``), by ``git`` from their repositories when the network
   allows, otherwise from the archives in ``../shared/vendor/`` (or ``DSD_VENDOR_DIR``), checked
   against their ``SHA256SUMS`` first.

Standard library only: it runs before any virtual environment exists.

    python scripts/comfyui_host.py prepare   # prints the host's path (prepares the cache if needed)
    python scripts/comfyui_host.py find      # prints the host's path, or exits 1 saying what is missing
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("comfyui_host")

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache"
CACHED_HOST = CACHE_DIR / "ComfyUI"
MARKER = ".dsd-host.json"  # written last: a cache without it is an interrupted preparation
PREPARE_COMMAND = "python scripts/comfyui_host.py prepare"  # also what `make test` runs


@dataclass(frozen=True)
class Pin:
    name: str
    url: str
    commit: str
    archive: str


COMFYUI = Pin(
    "ComfyUI",
    "https://github.com/comfyanonymous/ComfyUI",
    "3cd7b32f1b7e7e90395cefe7d9f9b1f89276d8ce",  # v0.8.0
    "ComfyUI-v0.8.0.tar.gz",
)
COMFYUI_GGUF = Pin(
    "ComfyUI-GGUF",
    "https://github.com/city96/ComfyUI-GGUF",
    "795e45156ece99afbc3efef911e63fcb46e6a20d",
    "ComfyUI-GGUF-795e451.tar.gz",
)
TESTED_VERSION = "v0.8.0"


class HostError(RuntimeError):
    """The host cannot be found or prepared; the message says what to do."""


def is_comfyui(path: Path) -> bool:
    return (path / "comfy" / "model_management.py").is_file() and (path / "nodes.py").is_file()


def find_comfyui() -> Path | None:
    """The host by the rule above, without preparing anything."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        path = Path(env).expanduser()
        if not is_comfyui(path):
            raise HostError(f"COMFYUI_PATH={env} is not a ComfyUI checkout (no comfy/model_management.py)")
        return path.resolve()
    if REPO_ROOT.parent.name == "custom_nodes" and is_comfyui(REPO_ROOT.parent.parent):
        return REPO_ROOT.parent.parent.resolve()
    if (CACHED_HOST / MARKER).is_file() and is_comfyui(CACHED_HOST):
        return CACHED_HOST
    return None


def gguf_pack(root: Path) -> Path | None:
    """ComfyUI-GGUF inside the host's custom_nodes, whatever its folder name."""
    for folder in sorted((root / "custom_nodes").glob("*")):
        if (folder / "loader.py").is_file() and (folder / "ops.py").is_file() and "gguf" in folder.name.lower():
            return folder
    return None


def vendor_dir() -> Path:
    return Path(os.environ.get("DSD_VENDOR_DIR", REPO_ROOT.parent / "shared" / "vendor"))


def _git_checkout(pin: Pin, dest: Path, timeout: float) -> bool:
    """Fetch exactly the pinned commit; False (nothing left behind) when git or the network is not there."""
    if shutil.which("git") is None:
        return False
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    steps = [
        ["git", "init", "-q", str(dest)],
        ["git", "-C", str(dest), "fetch", "-q", "--depth", "1", pin.url, pin.commit],
        ["git", "-C", str(dest), "checkout", "-q", "FETCH_HEAD"],
    ]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True, timeout=timeout, env=env)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        logger.info("git could not fetch %s@%s (%s); using the vendored archive", pin.name, pin.commit[:8], exc)
        shutil.rmtree(dest, ignore_errors=True)
        return False
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified_archive(pin: Pin) -> Path:
    folder = vendor_dir()
    archive, sums = folder / pin.archive, folder / "SHA256SUMS"
    if not archive.is_file() or not sums.is_file():
        raise HostError(
            f"cannot fetch {pin.name} {pin.commit[:8]} with git (offline?) and {archive} (with SHA256SUMS beside "
            f"it) is missing: clone ComfyUI {TESTED_VERSION} yourself and set COMFYUI_PATH, or set DSD_VENDOR_DIR"
        )
    expected = {line.split()[1]: line.split()[0] for line in sums.read_text().splitlines() if line.strip()}
    if expected.get(pin.archive) != _sha256(archive):
        raise HostError(f"{archive} does not match its checksum in {sums}: the archive is damaged or replaced")
    return archive


def _unpack(pin: Pin, dest: Path) -> None:
    archive = _verified_archive(pin)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp, tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
        (top,) = list(Path(tmp).iterdir())  # each archive unpacks to one folder
        top.rename(dest)


def _obtain(pin: Pin, dest: Path, timeout: float) -> str:
    if _git_checkout(pin, dest, timeout):
        return f"git {pin.url}@{pin.commit}"
    _unpack(pin, dest)
    return f"archive {pin.archive} (sha256 verified)"


def prepare(timeout: float = 120.0) -> Path:
    """The host by the rule above; builds ``.cache/ComfyUI`` when there is none (atomically: a kill
    half-way leaves no cache that passes for prepared)."""
    found = find_comfyui()
    if found is not None:
        return found
    CACHE_DIR.mkdir(exist_ok=True)
    staging = CACHE_DIR / "ComfyUI.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(CACHED_HOST, ignore_errors=True)  # an unfinished earlier attempt (no marker)
    staging.mkdir()
    sources = {COMFYUI.name: _obtain(COMFYUI, staging / "host", timeout)}
    gguf_dest = staging / "host" / "custom_nodes" / COMFYUI_GGUF.name
    sources[COMFYUI_GGUF.name] = _obtain(COMFYUI_GGUF, gguf_dest, timeout)
    (staging / "host").rename(CACHED_HOST)
    staging.rmdir()
    marker = {"comfyui": COMFYUI.commit, "comfyui_gguf": COMFYUI_GGUF.commit, "sources": sources}
    (CACHED_HOST / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    logger.info("prepared the ComfyUI host at %s (%s)", CACHED_HOST, sources)
    return CACHED_HOST


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["find", "prepare"])
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per git step before the archive is used")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        root = prepare(args.timeout) if args.action == "prepare" else find_comfyui()
    except HostError as exc:
        logger.error("error: %s", exc)
        return 2
    if root is None:
        logger.error("no ComfyUI host found; `%s` prepares one", PREPARE_COMMAND)
        return 1
    sys.stdout.write(f"{root}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
