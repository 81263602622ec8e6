"""Atomic writes: nothing edgebert writes is ever seen half-written, even after SIGKILL.

A file is written to a temp file beside it, fsynced and renamed. A directory (a bundle, a
checkpoint) is built in a hidden staging directory beside the target and swapped into place. A
small guard process watches each staging: when the writer's end of a pipe closes, whether because
the writer finished, raised, or was killed, the guard removes what is left of the staging directory
and, if the writer died between the two renames of a swap, puts the old directory back.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgebert.errors import EdgebertError

log = logging.getLogger("edgebert")

# Run by the guard process: wait for EOF on stdin, then restore or clean up.
_GUARD = """
import os, shutil, sys
stage, target, old = sys.argv[1:4]
sys.stdin.buffer.read()
if not os.path.exists(target) and os.path.isdir(old):
    os.replace(old, target)
shutil.rmtree(stage, ignore_errors=True)
shutil.rmtree(old, ignore_errors=True)
"""


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a temp file beside ``path``, fsync, rename."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write text atomically: a temp file beside ``path``, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, file_mode())  # mkstemp's 0600 would keep other users out of a bundle
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staging(
    target: Path, *, start_from: Path | None = None, replace: bool = False, marker: str = "manifest.json"
) -> Iterator[Path]:
    """Yield a staging directory beside ``target`` (empty, or a copy of ``start_from``); it becomes
    ``target`` on success.

    On any exception, or if the process is killed, the staging directory is removed and ``target``
    is left as it was. An existing ``target`` is only replaced when it holds ``marker`` (it is one
    of ours) or is empty.
    """
    target = Path(target).absolute()
    check_replaceable(target, replace=replace or start_from is not None, marker=marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = target.parent / f".{target.name}.{secrets.token_hex(6)}.partial"
    old = stage.with_suffix(".old")
    # the guard starts before the staging directory exists, so no moment is left unwatched
    guard = subprocess.Popen(
        [sys.executable, "-c", _GUARD, str(stage), str(target), str(old)],
        stdin=subprocess.PIPE,
        start_new_session=True,  # a Ctrl-C to the writer's process group must not stop the guard
    )
    try:
        stage.mkdir()
        if start_from is not None:
            for item in start_from.iterdir():
                copy = shutil.copytree if item.is_dir() else shutil.copy2
                copy(item, stage / item.name)
        yield stage
        _settle(stage)
        cwd = _cwd_within(target)
        if target.exists():
            os.replace(target, old)
        os.replace(stage, target)
        _fsync_dir(target.parent)
        if cwd is not None:  # this process's current directory keeps its path: now in the new copy
            os.chdir(cwd if cwd.is_dir() else target)
            log.warning(
                "'%s' was replaced by its new copy: a shell whose current directory is inside it still "
                'sees the old one, removed, until it runs cd "$PWD"',
                target,
            )
    finally:
        assert guard.stdin is not None
        guard.stdin.close()  # the guard removes the staging directory and any old copy
        guard.wait(timeout=60)


def check_replaceable(target: Path, *, replace: bool, marker: str) -> None:
    """Refuse an output directory ``staging`` would refuse: one that exists without ``replace``,
    or that holds files but not ``marker`` (it is not one of ours). Commands that work for long
    before they save call it first, so that no work is lost to the refusal."""
    target = Path(target).absolute()
    if not target.exists():
        return
    if not replace:
        raise EdgebertError(f"'{target}' already exists: choose another --out or pass --force to replace it")
    if not (target / marker).is_file() and any(target.iterdir()):
        raise EdgebertError(f"'{target}' exists and holds no {marker}: refusing to replace it")


@functools.cache
def file_mode() -> int:
    """The mode open() gives a new file: 0666 less the umask (where mkstemp, onnx's external data and
    safetensors give 0600). Read once: reading the umask means setting it for a moment."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _cwd_within(target: Path) -> Path | None:
    """The current directory, if it is ``target`` or inside it."""
    try:
        cwd = Path.cwd()
    except FileNotFoundError:  # already removed
        return None
    real = target.resolve()
    return cwd if cwd == real or real in cwd.parents else None


def _settle(root: Path) -> None:
    """Give every file under ``root`` the mode of a new file, readable by whoever may read the
    directory, and flush it to disk."""
    mode = file_mode()
    for path in root.rglob("*"):
        if path.is_file():
            os.chmod(path, mode)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
