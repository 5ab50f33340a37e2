"""Looking at a folder tree that another process is writing (a CLI under test, a server), and
waiting on it.

Entries vanish between being listed and being looked at: a stage renames its ``.tmp`` folder
into place, a server removes a temporary file. ``Path.rglob`` and ``is_file``/``read_bytes`` on
what it listed then raise FileNotFoundError (a CI run failed that way). Everything here takes a
vanished entry as "not there", so a test that polls a changing tree is as steady as one that
reads a finished one. Waits are deadline-based and generous: a busy 2-core CI machine is slow,
and the deadline only guards against a hang.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

# How long a test waits for a child process to make progress before it calls it a hang.
PATIENCE_S = 300.0


def walk_files(
    root: Path, *, follow_links: bool = False, skip: Callable[[str], bool] = lambda _name: False
) -> Iterator[Path]:
    """Paths of the non-folder entries under ``root``, now, leaving out the files and folders whose
    name ``skip`` picks. Folders that vanish mid-walk are skipped (``os.walk`` hands their errors
    to ``onerror``, which ignores them); nothing is stat'ed."""
    for folder, dirs, names in os.walk(root, followlinks=follow_links, onerror=lambda _exc: None):
        dirs[:] = [d for d in dirs if not skip(d)]
        yield from (Path(folder) / name for name in names if not skip(name))


def unfinished(name: str) -> bool:
    """A write not finished: ``dsd.io``'s temporaries (``.name.*.tmp`` files and folders)."""
    return name.endswith(".tmp")


def count_files(root: Path, *, skip: Callable[[str], bool] = unfinished) -> int:
    """How many files are under ``root`` now (0 when it does not exist yet), not counting those
    ``skip`` picks by name, nor anything inside a folder it picks (default: unfinished writes, so a
    temporary folder a killed run left behind counts for nothing)."""
    return sum(1 for _ in walk_files(root, skip=skip))


def read_if_present(path: Path) -> bytes | None:
    """The bytes of ``path``, or None when it vanished (or is a folder, a dangling link) meanwhile."""
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def files_containing(roots: Path | Iterable[Path], needle: bytes, *, follow_links: bool = False) -> list[Path]:
    """Files under ``roots`` whose bytes hold ``needle`` (a secret that must be written nowhere).
    Links are not followed (a ComfyUI ``custom_nodes`` entry links to this repository)."""
    found = []
    for root in [roots] if isinstance(roots, Path) else roots:
        for path in walk_files(root, follow_links=follow_links):
            if path.is_symlink():
                continue
            data = read_if_present(path)
            if data is not None and needle in data:
                found.append(path)
    return found


def wait_until(
    condition: Callable[[], bool],
    *,
    process: subprocess.Popen | None = None,
    timeout_s: float = PATIENCE_S,
    interval_s: float = 0.02,
    what: str = "the condition",
) -> bool:
    """Poll ``condition`` until it holds (True), or ``process`` has exited (False); an
    AssertionError names ``what`` when ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if process is not None and process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(interval_s)
