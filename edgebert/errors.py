"""The one path for errors: the library raises these; only ``cli.py`` turns them into exit codes.

Every message says what is wrong and what to do about it, in one line.
"""

from __future__ import annotations

from pathlib import Path


class EdgebertError(Exception):
    """Base of every error edgebert raises on purpose."""


class SettingsError(EdgebertError, ValueError):
    """Settings no run can use: a value out of range, or options that do not go together (the
    command line's usage error, exit code 2)."""


class BundleError(EdgebertError):
    """A bundle is missing, incomplete, tampered with, or from a newer edgebert."""


class ModelError(EdgebertError):
    """A checkpoint cannot be found or is not a BERT edgebert can handle."""


class DataError(EdgebertError):
    """A data file cannot be read as labeled text."""


class InputError(EdgebertError, ValueError):
    """Text given to the runtime is not something it can predict on."""


class TextTypeError(InputError, TypeError):
    """An item given to the runtime is not a string (or a pair of strings)."""


class ValidationError(EdgebertError):
    """A derived model does not match its parent within the stated tolerance."""


class MissingDependencyError(EdgebertError):
    """An optional dependency needed for this verb is not installed."""


def require(module: str, extra: str) -> None:
    """Raise a clear error when ``module`` (an optional dependency) cannot be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(f"this needs the Python package '{module}': {install(extra)}")


def install(extra: str) -> str:
    """How to add edgebert's optional dependencies ``extra`` (edgebert installs from its source)."""
    return f"install edgebert's '{extra}' extra (pip install '.[{extra}]' in edgebert's source directory)"


def os_reason(exc: OSError, path: str | Path) -> str:
    """Why the operating system refused an operation on ``path``, and on which file where that is
    another (one inside it, say)."""
    where = f" ('{exc.filename}')" if exc.filename and Path(exc.filename) != Path(path) else ""
    return f"{exc.strerror or exc}{where}"
