"""The bundle: a directory every verb reads and adds to, described by a versioned manifest.

Writes go through ``edgebert.atomic``: a crash leaves the old bundle or the new one, never half
of one. Loading verifies the format version
and every artifact's sha256 before anything parses a model file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgebert import __version__
from edgebert.atomic import recover, write_json
from edgebert.errors import BundleError, os_reason

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
REPORTS = "reports"
# what file managers leave in a directory they show or copy (macOS on any volume, AppleDouble
# "._NAME" files on FAT/exFAT cards, Windows Explorer): not the bundle's, so neither refused nor read
OS_LITTER = re.compile(r"\.DS_Store|\._.+|\.Spotlight-V100|\.Trashes|\.fseventsd|Thumbs\.db|desktop\.ini")


@dataclass(frozen=True)
class Artifact:
    """One file of a bundle: a model (with a precision) or the tokenizer."""

    file: str
    sha256: str
    kind: str = "model"
    precision: str | None = None
    parent: str | None = None
    made_by: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds and how each part was made (``manifest.json``)."""

    task: str
    labels: tuple[str, ...] | None
    max_length: int
    inputs: tuple[str, ...]
    output: str
    output_name: str
    source: dict[str, Any]
    artifacts: dict[str, Artifact]
    pooling: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    format_version: int = FORMAT_VERSION
    edgebert_version: str = __version__

    def with_artifact(self, name: str, artifact: Artifact) -> Manifest:
        return dataclasses.replace(self, artifacts={**self.artifacts, name: artifact})

    def with_validation(self, name: str, validation: dict[str, Any]) -> Manifest:
        """This manifest with artifact ``name``'s validation figures recorded."""
        return self.with_artifact(name, dataclasses.replace(self.artifacts[name], validation=validation))

    def descendants(self, name: str) -> list[str]:
        """The artifacts made from artifact ``name``, directly or through others."""
        children = [child for child, art in self.artifacts.items() if art.parent == name]
        return [found for child in children for found in (child, *self.descendants(child))]

    def without(self, names: list[str]) -> Manifest:
        """This manifest without artifacts ``names``."""
        return dataclasses.replace(
            self, artifacts={k: v for k, v in self.artifacts.items() if k not in names}
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["labels"] = list(self.labels) if self.labels is not None else None
        data["inputs"] = list(self.inputs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["artifacts"] = {name: Artifact(**art) for name, art in data["artifacts"].items()}
        labels = data.get("labels")
        if labels is not None and not isinstance(labels, list):
            raise TypeError(f"labels must be a list, not {type(labels).__name__}")
        data["labels"] = tuple(labels) if labels is not None else None
        data["inputs"] = tuple(data["inputs"])
        return cls(**data)


@dataclass(frozen=True)
class Bundle:
    """A verified bundle directory; ``inode``, where it was loaded from disk, identifies the
    directory it was loaded from (a writer replaces a bundle by renaming a new directory into place)."""

    path: Path
    manifest: Manifest
    inode: int | None = field(default=None, compare=False)

    def unchanged(self) -> bool:
        """Whether ``path`` is still the directory this bundle was loaded from."""
        return self.inode is None or _inode(self.path) == self.inode

    def file(self, name: str) -> Path:
        return self.path / self.manifest.artifacts[name].file

    def models(self) -> dict[str, Artifact]:
        """Model artifacts by name, fp32 first. (Bundles made before calibration.json had a kind of its
        own listed it as a model without a precision.)"""
        models = {n: a for n, a in self.manifest.artifacts.items() if a.kind == "model" and a.precision}
        return dict(sorted(models.items(), key=lambda item: item[1].parent is not None))

    def graph_for(self, model: str) -> str | None:
        """The artifact holding ``model`` as another graph (kind ``graph``: an INT8 model with
        its attention fused, run for small calls), if there is one."""
        graphs = (n for n, a in self.manifest.artifacts.items() if a.kind == "graph" and a.parent == model)
        return next(graphs, None)

    def verify(self, name: str) -> None:
        """Check artifact ``name`` and the weights it reads against the manifest again: for a model
        opened after loading (the bundle may have been replaced since)."""
        weights = [n for n, a in self.manifest.artifacts.items() if a.parent == name and a.kind == "weights"]
        try:
            for each in (name, *weights):
                verify_artifact(self.path, each, self.manifest.artifacts[each])
        except (BundleError, OSError) as exc:
            raise BundleError(
                f"bundle '{self.path}' changed since it was loaded (its '{name}' model is not the one "
                "loaded): load it again"
            ) from exc

    @classmethod
    def load(cls, path: str | Path) -> Bundle:
        """The bundle at ``path``, every file checked against its manifest. A bundle replaced while
        it is read (by a writer renaming a new one into place) is read again."""
        path = Path(path)
        for attempt in range(3):
            before = _inode(path)
            try:
                bundle = cls._load(path, before)
            except BundleError:
                # the same directory throughout: the error stands; none: maybe a writer between its
                # two renames (see ``atomic.staging``), so look again in a moment
                if _inode(path) == before and (before is not None or attempt == 2):
                    raise
                time.sleep(0.01)
                continue
            if _inode(path) == before:
                return bundle
        raise BundleError(f"bundle '{path}' was replaced again and again while it was read: load it again")

    @classmethod
    def _load(cls, path: Path, inode: int | None) -> Bundle:
        try:
            return cls._read(path, inode)
        except OSError as exc:  # unreadable: permissions, say
            raise BundleError(f"cannot read bundle '{path}': {os_reason(exc, path)}") from exc

    @classmethod
    def _read(cls, path: Path, inode: int | None) -> Bundle:
        if path.name == MANIFEST and path.is_file():
            raise BundleError(
                f"'{path}' is a bundle's manifest: pass the bundle's directory, '{path.parent}'"
            )
        if not (path / MANIFEST).is_file():
            recover(path)  # a write killed together with its guard may have moved it aside
        if not (path / MANIFEST).is_file():
            if (path / "config.json").is_file():  # a checkpoint: the model a bundle is made from
                raise BundleError(
                    f"'{path}' is a model checkpoint, not a bundle: export it first with "
                    f"`edgebert export --model {path} --out BUNDLE`"
                )
            raise BundleError(
                f"no bundle at '{path}' (no {MANIFEST}): create one with `edgebert export --out {path}`"
            )
        manifest = read_manifest(path)
        for name, artifact in manifest.artifacts.items():
            verify_artifact(path, name, artifact)
        known = {MANIFEST, REPORTS} | {a.file for a in manifest.artifacts.values()}
        unknown = sorted(
            p.name for p in path.iterdir() if p.name not in known and not OS_LITTER.fullmatch(p.name)
        )
        if unknown:
            raise BundleError(
                f"bundle '{path}' holds files its manifest does not list ({', '.join(unknown)}): "
                "remove them or re-export the bundle"
            )
        return cls(path.absolute(), manifest, inode)  # a process that changes directory still finds it


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def read_manifest(path: Path) -> Manifest:
    try:
        data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        version = data["format_version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(
            f"'{path / MANIFEST}' is not a valid manifest ({exc}): re-export the bundle"
        ) from exc
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"'{path / MANIFEST}' has format version {version!r}, not a number: re-export")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"bundle '{path}' has format version {version}, newer than this edgebert reads "
            f"({FORMAT_VERSION}): upgrade edgebert"
        )
    try:
        manifest = Manifest.from_dict(migrate(data))
    except (KeyError, TypeError, AttributeError) as exc:
        raise BundleError(
            f"'{path / MANIFEST}' is missing a field or has an unknown one ({exc}): re-export"
        ) from exc
    wrong = _malformed(manifest)
    if wrong:
        raise BundleError(f"'{path / MANIFEST}' is not a valid manifest ({wrong}): re-export the bundle")
    return manifest


def _malformed(manifest: Manifest) -> str | None:
    """What is wrong with a manifest whose fields are all there (a hand edit, say), or None."""
    classify = manifest.task == "classify"
    if manifest.task not in ("classify", "embed"):
        return f"task {manifest.task!r} is neither classify nor embed"
    if classify and not (
        manifest.labels and len(manifest.labels) >= 2 and all(isinstance(x, str) for x in manifest.labels)
    ):
        return "a classifier needs two labels or more"
    if manifest.labels is not None and len(set(manifest.labels)) != len(manifest.labels):
        return "a label is listed twice"
    if not isinstance(manifest.source, dict) or not isinstance(manifest.pooling, dict | None):
        return "source must be a mapping, pooling a mapping or null"
    if not isinstance(manifest.max_length, int) or not 2 <= manifest.max_length <= 8192:
        return f"max_length {manifest.max_length!r} is not a number of tokens"
    if not all(isinstance(v, str) for v in (manifest.output, manifest.output_name)):
        return "output and output_name must be names"
    for name, art in manifest.artifacts.items():
        if not (
            isinstance(art.file, str) and isinstance(art.made_by, dict) and isinstance(art.validation, dict)
        ):
            return f"artifact {name!r} has a field of the wrong type"
        if art.kind == "graph" and not isinstance(art.made_by.get("up_to_tokens"), int):
            return f"artifact {name!r} does not say up to how many tokens it runs (up_to_tokens)"
    if "tokenizer" not in manifest.artifacts:
        return "it lists no tokenizer"
    if "fp32" not in manifest.artifacts:
        return "it lists no fp32 model"
    for name in manifest.artifacts:  # each artifact's line of parents ends, at a model edgebert made
        seen = [name]
        while (parent := manifest.artifacts[seen[-1]].parent) is not None:
            if parent not in manifest.artifacts or parent in seen:
                return f"artifact {name!r} descends from {parent!r}, " + (
                    "which it does not list" if parent not in manifest.artifacts else "in a circle"
                )
            seen.append(parent)
    return None


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring a manifest of any older format version up to ``FORMAT_VERSION``, one step at a time."""
    data = dict(data)
    while data["format_version"] < FORMAT_VERSION:
        data = _MIGRATIONS[data["format_version"]](data)
    return data


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Format 2 names the model graph's output (``logits`` or ``embeddings``, as ``output`` says);
    format 1 graphs all called it ``output``."""
    return {**data, "output_name": "output", "format_version": 2}


_MIGRATIONS = {1: _v1_to_v2}


def verify_artifact(root: Path, name: str, artifact: Artifact) -> None:
    """Refuse paths that leave the bundle, links, missing files and checksum mismatches."""
    target = root / artifact.file
    if Path(artifact.file).name != artifact.file or artifact.file in ("", ".", ".."):
        raise BundleError(
            f"artifact '{name}' points outside bundle '{root}' ({artifact.file!r}): refusing to load it"
        )
    if target.is_symlink() or (target.exists() and not target.is_file()):
        raise BundleError(f"'{target}' is a link or not a regular file: bundles hold plain files only")
    if not target.is_file():
        raise BundleError(f"'{target}' is missing from the bundle: re-export it with `edgebert export`")
    if sha256(target) != artifact.sha256:
        raise BundleError(
            f"'{target}' does not match its sha256 in {MANIFEST} (corrupt or modified): re-export it"
        )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact(stage: Path, file: str, **fields: Any) -> Artifact:
    """An Artifact for ``file`` inside ``stage``, with its checksum."""
    return Artifact(file=file, sha256=sha256(stage / file), **fields)


def write_manifest(stage: Path, manifest: Manifest) -> None:
    """Write ``manifest`` into ``stage``; never one that loading would refuse."""
    wrong = _malformed(manifest)
    if wrong:
        raise BundleError(f"edgebert made a manifest it cannot load ({wrong}): report this model")
    write_json(stage / MANIFEST, manifest.to_dict())
