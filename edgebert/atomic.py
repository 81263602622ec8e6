"""Atomic writes: nothing edgebert writes is ever seen half-written, even after SIGKILL.

A file is written to a temp file beside it, fsynced and renamed. A directory (a bundle, a
checkpoint) is built in a hidden staging directory beside the target and swapped into place. A
small guard process watches each staging: when the writer's end of a pipe closes, whether because
the writer finished, raised, or was killed, the guard removes what is left of the staging directory
and, if the writer died between the two renames of a swap, puts the old directory back.

Writers of one directory take turns: each holds an flock on it from before it reads it until its
swap (``locked``), and on its staging directory while that lives. What a writer killed together
with its guard leaves is found by the next writer (or load) of that path: a staging directory or
old copy no live process holds is removed, or the old copy put back where the target is gone
(``recover``). Paths that cannot be written are refused before any work (``check_writable``) and
the operating system's refusals become one line (``writing``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgebert.errors import EdgebertError, os_reason

try:
    import fcntl
except ImportError:  # Windows: writers are not serialized there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("edgebert")
# the part of a target's name that its staging directory's name repeats: the whole name, where it fits
# beside the 22 characters staging adds within the 255 bytes a file name may have
_STAGE_NAME_BYTES = 200

# Run by the guard process: wait for EOF on stdin, then restore or clean up.
_GUARD = """
import os, shutil, sys
stage, target, old = sys.argv[1:4]
sys.stdin.buffer.read()
try:
    if not os.path.exists(target) and os.path.isdir(old):
        os.replace(old, target)
except OSError:  # another process's recover() put it back first
    pass
shutil.rmtree(stage, ignore_errors=True)
shutil.rmtree(old, ignore_errors=True)
"""


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a temp file beside ``path``, fsync, rename."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write text atomically: a temp file beside ``path``, fsync, rename."""
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
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
def writing(path: Path) -> Iterator[None]:
    """Report a failure of the operating system (disk full, read-only, permission) while writing
    ``path`` as one line."""
    try:
        yield
    except OSError as exc:
        raise EdgebertError(f"could not write '{path}': {os_reason(exc, path)}") from exc


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
    target = Path(os.path.realpath(target))  # a link's directory, and never a path ending in ".."
    replace = replace or start_from is not None
    recover(target)
    with writing(target), locked(target):
        check_replaceable(target, replace=replace, marker=marker)
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = target.parent / f"{_stage_prefix(target)}{secrets.token_hex(6)}.partial"
        old = stage.with_suffix(".old")
        # the guard starts before the staging directory exists, so no moment is left unwatched
        guard = subprocess.Popen(
            [sys.executable, "-c", _GUARD, str(stage), str(target), str(old)],
            stdin=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C to the writer's process group must not stop the guard
        )
        try:
            with _made_and_held(stage):  # held: ``recover`` sees that it is not left over
                if start_from is not None:
                    for item in start_from.iterdir():
                        copy = shutil.copytree if item.is_dir() else shutil.copy2
                        copy(item, stage / item.name)
                yield stage
                _settle(stage)
                with locked(target.parent):  # the check and the swap as one, for a new target
                    if target.exists() and not replace:  # made meanwhile (a new path had no lock)
                        raise EdgebertError(f"'{target}' was made while this ran: pass --force to replace it")
                    _swap(stage, target, old)
        finally:
            assert guard.stdin is not None
            guard.stdin.close()  # the guard removes the staging directory and any old copy
            with contextlib.suppress(subprocess.TimeoutExpired):
                guard.wait(timeout=60)
            if target.exists():  # swapped, or never moved: the old copy is no longer needed
                shutil.rmtree(old, ignore_errors=True)  # (the guard's work, in case it was killed)


def _swap(stage: Path, target: Path, old: Path) -> None:
    """Put ``stage`` in ``target``'s place (the old ``target`` moved to ``old`` in between)."""
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


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold ``directory`` (a bundle, a checkpoint) against other edgebert processes writing it: the
    second waits for the first (an flock on the directory itself, so nothing is left beside it).
    Nothing to hold where it does not exist yet."""
    with contextlib.ExitStack() as stack:
        while fcntl is not None:
            try:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:  # not there yet (or not ours to read): nothing to hold
                break
            stack.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another edgebert process to finish writing '%s'", directory)
                fcntl.flock(fd, fcntl.LOCK_EX)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(directory).st_ino == os.fstat(fd).st_ino:
                    break  # still the directory at that path, not one the other writer replaced
            stack.close()
            recover(directory)  # gone: its writer may have died between its two renames
        yield


@contextlib.contextmanager
def _made_and_held(stage: Path) -> Iterator[None]:
    """Make directory ``stage`` and hold an flock on it for as long as this process runs the block
    (or lives); its parent is held while it is made, as ``recover`` holds it while it looks."""
    with locked(stage.parent):
        stage.mkdir()
        if fcntl is None:
            yield
            return
        fd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


def recover(target: Path) -> None:
    """Clean up after writers of ``target`` that were killed together with their guard: put back an
    old copy that a swap had moved aside when ``target`` is gone, and remove staging directories no
    live process holds."""
    target = Path(os.path.realpath(target))  # where staging, which resolves links, left them
    ours = re.compile(re.escape(_stage_prefix(target)) + r"[0-9a-f]{12}\.(partial|old)")
    with locked(target.parent):
        try:
            leftovers = sorted(p for p in target.parent.iterdir() if ours.fullmatch(p.name))
        except OSError:  # no parent yet, or not readable: nothing of ours there
            return
        for path in leftovers:
            _recover_one(path, target)


def _recover_one(path: Path, target: Path) -> None:
    """Restore or remove ``path``, a staging directory or old copy of ``target``, unless a live
    writer holds it. Without flock (Windows) a live writer's cannot be told from a leftover: left be."""
    if fcntl is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: a live writer's
        if path.suffix == ".old" and not target.exists():
            os.replace(path, target)
            log.warning("'%s' restored from the copy an interrupted write had moved aside", target)
        else:
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed '%s', left by an interrupted write", path)
    except OSError:  # a live writer's, read-only, or another process recovered it first
        pass
    finally:
        os.close(fd)


def _stage_prefix(target: Path) -> str:
    """What the names of ``target``'s staging directories and old copies start with: its name, or
    where that is too long, its first bytes (whole characters) and a digest of the whole name."""
    name = os.fsencode(target.name)
    if len(name) <= _STAGE_NAME_BYTES:
        return f".{target.name}."
    cut = name[: _STAGE_NAME_BYTES - 9].decode("utf-8", "ignore")
    return f".{cut}-{hashlib.sha256(name).hexdigest()[:8]}."


def check_replaceable(target: Path, *, replace: bool, marker: str) -> None:
    """Refuse an output directory ``staging`` would refuse: one that exists without ``replace``,
    or that holds files but not ``marker`` (it is not one of ours). Commands that work for long
    before they save call it first, so that no work is lost to the refusal."""
    target = Path(os.path.realpath(target))
    check_writable(target)
    recover(target)  # an old copy a killed write moved aside is the target
    if not target.exists():
        return
    if not replace:
        raise EdgebertError(f"'{target}' already exists: choose another --out or pass --force to replace it")
    if not (target / marker).is_file() and any(target.iterdir()):
        raise EdgebertError(f"'{target}' exists and holds no {marker}: refusing to replace it")


def check_writable(target: Path, advice: str = "") -> None:
    """Refuse a path this process could not create or replace: a name too long for the file
    system, or a directory above it that it may not write in (``advice`` ends the message)."""
    target = Path(target).absolute()
    too_long = next((p.name for p in (target, *target.parents) if len(os.fsencode(p.name)) > 255), None)
    if too_long is not None:
        raise EdgebertError(f"'{too_long[:40]}...' is longer than a file name may be (255 bytes)")
    existing = next(p for p in target.parents if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        error = errno.ENOTDIR if not existing.is_dir() else errno.EACCES
        raise EdgebertError(f"cannot write '{target}': {os.strerror(error)} ('{existing}'){advice}")


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
    """Flush ``path``'s entries to disk, where this process may open it (it may write and enter a
    directory it may not read)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
