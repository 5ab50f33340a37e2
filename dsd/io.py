"""Crash-safe file output shared by conversion, datagen and training.

Every file the project writes goes through here: a temporary sibling is written, flushed,
fsync'ed and renamed over the destination, so a reader (or a rerun after ``kill -9``) sees
either the old complete file or the new complete file, never half of one. Temporaries are
created with ``open(..., 0o666)`` / ``mkdir(..., 0o777)`` so the results get the user's normal
umask-derived mode (``tempfile.mkstemp``/``mkdtemp`` would leave them 0600/0700). A secret
(``atomic_path(..., secret=True)``) is the exception: its temporary is created 0600 before a byte is
written, and no umask-derived mode is ever applied to it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily: the provider layer and CLIs stay light
    import torch

logger = logging.getLogger(__name__)
_TEMP_ATTEMPTS = 100


def _fsync_dir(path: Path) -> None:
    # Directory fsync makes the rename itself durable; not supported everywhere (e.g. Windows).
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_sibling(dest: Path, suffix: str, make: Callable[[Path], None]) -> Path:
    """A fresh ``.<name>.<random><suffix>.tmp`` beside ``dest``, created by ``make`` (exclusive)."""
    for _ in range(_TEMP_ATTEMPTS):
        path = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}{suffix}.tmp")
        try:
            make(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{dest.parent}: no free temporary name for {dest.name} after {_TEMP_ATTEMPTS} tries")


_SECRET_MODE = 0o600


def _create_file(path: Path, mode: int = 0o666) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], suffix: str = "", *, secret: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it replaces ``dest`` atomically.

    On any exception the temporary file is removed and ``dest`` is left untouched. The result has
    the mode a plain ``open(dest, "w")`` would give it, even when the writer replaced the temporary
    (safetensors' ``save_file`` writes its own 0600 file). ``secret=True``: the temporary is created
    0600 (by the kernel, whatever the umask; never wider) and the result stays 0600.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if secret:
        tmp = _temp_sibling(dest, suffix, lambda p: _create_file(p, _SECRET_MODE))
        mode = _SECRET_MODE
    else:
        tmp = _temp_sibling(dest, suffix, _create_file)
        mode = tmp.stat().st_mode & 0o777  # 0o666 minus the umask, applied by the kernel
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
            if os.fstat(fh.fileno()).st_mode & 0o777 != mode:
                # A secret's temporary can only be narrower than 0600 here (a stricter umask).
                os.fchmod(fh.fileno(), mode)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(dest: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(dest, text.encode("utf-8"))


def atomic_write_json(dest: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(dest, json.dumps(obj, indent=indent, sort_keys=True, default=str) + "\n")


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor],
    dest: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a safetensors file atomically. Metadata values must be strings."""
    from safetensors.torch import save_file

    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(dest, suffix=".safetensors") as tmp:
        save_file(contiguous, str(tmp), metadata=dict(metadata) if metadata else None)


def _old_sibling(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.old")


@contextlib.contextmanager
def atomic_directory(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a whole directory in a temporary sibling and swap it in at the end.

    Used for checkpoints: ``dest`` either does not exist or is complete. An existing ``dest`` is
    moved aside to ``.<name>.old`` first and removed after the swap; a kill between those steps is
    undone by :func:`recover_replaced_directory` (run here on entry and by
    :func:`clean_stale_temporaries`).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_replaced_directory(dest)
    tmp = _temp_sibling(dest, "", lambda p: p.mkdir(0o777))
    mode = tmp.stat().st_mode & 0o777
    try:
        yield tmp
        _normalise_modes(tmp, mode)
        old = None
        if dest.exists():
            old = _old_sibling(dest)
            os.replace(dest, old)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _normalise_modes(root: Path, dir_mode: int) -> None:
    """Give everything under ``root`` the umask-derived mode (``dir_mode`` is ``0o777`` minus the umask).

    Writers inside a checkpoint folder (safetensors through accelerate) create 0600 files of their own.
    """
    file_mode = dir_mode & 0o666
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        want = dir_mode if path.is_dir() else file_mode
        if path.stat().st_mode & 0o777 != want:
            path.chmod(want)


def recover_replaced_directory(dest: str | os.PathLike[str]) -> str | None:
    """Finish an interrupted :func:`atomic_directory` swap of ``dest``.

    ``.<name>.old`` without ``<name>``: the kill came between moving the old folder aside and moving
    the new one in, so ``.old`` is the last complete one and is put back. Both present: the swap
    finished and only the removal of ``.old`` was lost, so it is dropped. Returns ``"restored"``,
    ``"dropped"`` or None.
    """
    dest = Path(dest)
    old = _old_sibling(dest)
    if not old.is_dir():
        return None
    if dest.exists():
        shutil.rmtree(old)
        logger.info("%s: removed %s left by an interrupted replacement (the new folder is complete)", dest, old.name)
        return "dropped"
    os.replace(old, dest)
    _fsync_dir(dest.parent)
    logger.warning("%s: restored from %s (the process was stopped while replacing it)", dest, old.name)
    return "restored"


def clean_stale_temporaries(directory: str | os.PathLike[str]) -> int:
    """Clean up after interrupted atomic writes in ``directory``. Returns how many entries were handled.

    Removes ``.name.*.tmp`` leftovers and recovers interrupted folder replacements (``.name.old``,
    see :func:`recover_replaced_directory`) before anything reads the folder.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    handled = 0
    for old in sorted(directory.glob(".*.old")):
        if old.is_dir() and recover_replaced_directory(directory / old.name[1 : -len(".old")]):
            handled += 1
    for path in directory.glob(".*.tmp"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        handled += 1
    return handled
