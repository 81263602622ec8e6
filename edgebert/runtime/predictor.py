"""The torch-free Predictor: a bundle's tokenizer and one of its models in an ONNX Runtime session.

Thread-safety: ``predict`` may be called from several threads on one Predictor (ONNX Runtime
sessions allow concurrent ``run`` calls and the tokenizer is only read); the soak test checks it.

Batch invariance: a text gets the same answer alone or in a batch. fp32 models are batched by
length (padding changes nothing: measured 0.0 difference). Dynamic INT8 models compute activation
ranges over the whole batch, padding included, so a neighbour can move a text's answer (measured on
SST-2 dev: up to 0.22 in probability, 8 of 872 labels flipped); they run one text per call, which
on our CPU costs little throughput (batch 1: 250 items/s, batch 8: 296; benchmarks/results/cpu.md).
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgebert.bundle import Bundle, BundleError
from edgebert.errors import EdgebertError, InputError, TextTypeError
from edgebert.runtime.backends import (
    BACKENDS,
    BackendError,
    ByTokens,
    SessionOptions,
    open_session,
    require_backend,
    x86_without_vnni,
)

Text = str | tuple[str, str]
# measured with `edgebert bench --device openvino` on the default model's `export --quantize int8`
DYNAMIC_INT8_ON_OPENVINO = (
    "OpenVINO does not run dynamic INT8's MatMuls in INT8: it computes them in floating point from "
    "dequantized weights, more slowly than the fp32 model "
    "(all-MiniLM-L6-v2, batch 1 x 128 tokens: 14.3 ms against 9.5 at f32); for INT8 on OpenVINO, add "
    "its own INT8 model: `edgebert quantize BUNDLE --target openvino`"
)
# measured by benchmarks/peers.py on an AVX2-only EPYC (benchmarks/results/peers-avx2.md)
OPENVINO_INT8_WITHOUT_VNNI = (
    "this CPU has no INT8 dot-product instructions (VNNI), and there OpenVINO's INT8 models run no "
    "faster than its fp32 one (SST-2 MiniLM on an AVX2 EPYC, against OpenVINO fp32: edgebert's INT8 "
    "0.98x the time at batch 1 x 128 tokens, 1.11x at batch 8, 1.27x on real sentences; NNCF's "
    "own 1.31-1.43x): for speed here, pass precision fp32 (--precision fp32); precision int8 keeps "
    "INT8 without this warning"
)
MAX_CHARS_PER_TOKEN = 100  # a text longer than this many characters per token of max_length is cut
log = logging.getLogger("edgebert")


@dataclass(frozen=True, eq=False)
class Prediction:
    """One text's result: a label with its probability (classify) or an embedding (embed, a
    read-only array of its own). ``to_dict()`` gives it as JSON takes it. Equal when every field is;
    not hashable (it holds a dict and an array)."""

    label: str | None = None
    score: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    embedding: np.ndarray | None = None
    truncated: bool = False

    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Prediction):
            return NotImplemented
        same = (self.label, self.score, self.scores, self.truncated) == (
            other.label,
            other.score,
            other.scores,
            other.truncated,
        )
        if self.embedding is None or other.embedding is None:
            return same and self.embedding is other.embedding
        return same and np.array_equal(self.embedding, other.embedding)

    def __repr__(self) -> str:  # an embedding's hundreds of floats would bury the rest
        if self.embedding is None:
            return (
                f"Prediction(label={self.label!r}, score={self.score!r}, scores={self.scores!r}, "
                f"truncated={self.truncated})"
            )
        head = ", ".join(f"{x:.4f}" for x in self.embedding[:3])
        return (
            f"Prediction(embedding=<{self.embedding.size} floats: {head}, ...>, truncated={self.truncated})"
        )

    def to_dict(self) -> dict[str, Any]:
        if self.embedding is not None:
            return {"embedding": [round(float(x), 6) for x in self.embedding], "truncated": self.truncated}
        return {"label": self.label, "score": self.score, "scores": self.scores, "truncated": self.truncated}


def load_tokenizer(path: Path, max_length: int, *, pad_to_multiple_of: int | None = None) -> Any:
    """A fast tokenizer that pads to the longest text of a batch (rounded up to a multiple of
    ``pad_to_multiple_of``, if given) and truncates at ``max_length``."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises its own Exception subclass
        raise BundleError(
            f"'{path}' is not a tokenizer the tokenizers library reads ({exc}): re-export"
        ) from exc
    pad_id = (tokenizer.padding or {}).get("pad_id", tokenizer.token_to_id("[PAD]") or 0)
    tokenizer.enable_padding(
        pad_id=pad_id,
        pad_token=tokenizer.id_to_token(pad_id) or "[PAD]",
        pad_to_multiple_of=pad_to_multiple_of,
    )
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


class Predictor:
    """Predict with a bundle: ``Predictor("bundle").predict(["text", ("text", "pair")])``.

    ``backend``: ``cpu`` (ONNX Runtime), ``openvino``, ``gpu`` or ``tensorrt``; by default the one that
    reads the chosen model (OpenVINO for an ``.xml`` IR, else ONNX Runtime CPU). ``precision`` names
    the bundle's model (``int8``, ``fp32``, ``openvino-int8``...; on OpenVINO ``int8`` means
    ``openvino-int8``); by default the backend's best. ``inference_precision``: see ``open_session``.
    ``pad_to_multiple_of``: pad inputs to a multiple of this many tokens (default: the backend's, see
    ``Backend``; 1 pads only to the longest text of a batch). ``static_shapes`` (OpenVINO): compile
    a model for each of the last that many input shapes (faster, more memory: ``OpenVINOSession``).
    ``spinning=False`` (ONNX Runtime): its idle threads sleep at once after a call rather than spin
    for the next; for an application that predicts now and then, at some cost to back-to-back calls.
    A bundle replaced (by a writer renaming a new one into place) while it is opened is opened again.
    On ONNX Runtime CPU a model with another graph in the bundle (an INT8 model's fused
    attention) runs each call on the graph that is faster at its size (``ByTokens``; the model's
    own graph is loaded at the first call large enough to need it).
    """

    def __init__(
        self,
        bundle: str | Path | Bundle,
        *,
        precision: str | None = None,
        backend: str | None = None,
        threads: int | None = None,
        inference_precision: str | None = None,
        pad_to_multiple_of: int | None = None,
        static_shapes: int = 0,
        spinning: bool = True,
    ) -> None:
        _check_count("threads", threads, 1, most=1024)
        _check_count("pad_to_multiple_of", pad_to_multiple_of, 1)
        _check_count("static_shapes", static_shapes, 0)
        if not isinstance(bundle, str | Path | Bundle):
            raise InputError(f"bundle must be a bundle directory (str or Path), not {type(bundle).__name__}")
        settings = SessionOptions(threads, inference_precision, static_shapes, spinning)
        for _ in range(3):
            self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
            try:
                self._open(precision, backend, pad_to_multiple_of, settings)
            except EdgebertError:
                if self.bundle.unchanged():
                    raise
                continue
            if self.bundle.unchanged():  # not replaced by a writer while its files were opened
                return
        raise BundleError(
            f"bundle '{bundle}' was replaced again and again while it was opened: open it again"
        )

    def _open(
        self,
        precision: str | None,
        backend: str | None,
        pad_to_multiple_of: int | None,
        settings: SessionOptions,
    ) -> None:
        """``__init__``'s work: choose the bundle's model, load its tokenizer, open its sessions."""
        self.precision, self.backend = choose_model(self.bundle, precision, backend)
        _check_openvino_options(self.backend, settings.inference_precision, settings.static_shapes)
        # an ONNX dynamic INT8 model's ranges read the padding and the batch's other texts (see the
        # module docstring): no padding and one text a call for it (an IR is NNCF's, whose ranges are
        # static, though older bundles recorded it as made by "dynamic")
        dynamic = dynamic_int8(self.bundle, self.precision)
        padding = 1 if dynamic else BACKENDS[self.backend].pad_to_multiple_of
        self.tokenizer = load_tokenizer(
            self.bundle.file("tokenizer"),
            self.bundle.manifest.max_length,
            pad_to_multiple_of=pad_to_multiple_of or padding,
        )
        # without the characters' offsets, which nothing here reads (tokenizers 0.21 and later): the
        # same ids and masks; `encode` of one SST-2 dev sentence 74 us against 90 (AVX2 EPYC)
        self._encode_batch = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        model = functools.partial(
            open_session, self.bundle.file(self.precision), self.backend, **asdict(settings)
        )
        self.session: Any
        graph = self.bundle.graph_for(self.precision)  # the same model as another graph, for small calls
        if graph is not None and self.backend == "cpu":
            small = open_session(
                self.bundle.file(graph), "cpu", threads=settings.threads, spinning=settings.spinning
            )
            up_to = self.bundle.manifest.artifacts[graph].made_by["up_to_tokens"]

            def verified() -> Any:  # opened at the first large call: still the model loaded?
                try:
                    self.bundle.verify(self.precision)
                except BundleError as exc:  # replaced or removed since: the small graph is that model
                    log.warning("%s; large calls run on its fused-attention graph (slower)", exc)
                    return small
                return model()

            self.session = ByTokens(small, verified, up_to)
        else:
            self.session = model()
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.batch_size = batch_size_for(self.bundle.manifest.artifacts[self.precision].made_by.get("method"))

    def with_model(self, path: Path | bytes, *, threads: int | None = None) -> Predictor:
        """A Predictor with this one's bundle and tokenizer running another ONNX model on ONNX Runtime
        CPU (a file, or a serialized model: a candidate being compared with this one, say). It keeps
        this one's batch size and name: pass ``batch_size`` to ``outputs`` for a dynamic INT8 model."""
        other = copy.copy(self)
        other.session = open_session(path, "cpu", threads=threads)
        return other

    @property
    def task(self) -> str:
        return self.bundle.manifest.task

    @property
    def labels(self) -> tuple[str, ...]:
        return self.bundle.manifest.labels or ()

    def encode(
        self, texts: Sequence[Text], positions: Sequence[int] | None = None
    ) -> tuple[dict[str, np.ndarray], list[bool]]:
        """Model inputs for ``texts`` (padded to the longest) and which texts were truncated.

        A text with no token besides [CLS]/[SEP] (only characters the tokenizer drops) is an
        ``InputError`` naming its position (``positions[i]`` when given).
        """
        # texts cut first at MAX_CHARS_PER_TOKEN a token: what is past that would be truncated
        # anyway, and tokenizing megabytes takes seconds and hundreds of MB
        limit = self.bundle.manifest.max_length * MAX_CHARS_PER_TOKEN
        cut = [_cut(text, limit) for text in texts]
        encodings = self._encode_batch(cut)
        for row, encoding in enumerate(encodings):
            if all(encoding.special_tokens_mask):
                position = positions[row] if positions is not None else row
                raise InputError(
                    f"text {position} has no tokens this model's tokenizer keeps: give it a word"
                )
        width = self.bundle.manifest.max_length  # padded to a multiple, never past the longest input
        feeds = {
            "input_ids": np.array([e.ids[:width] for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask[:width] for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids[:width] for e in encodings], dtype=np.int64),
        }
        truncated = [bool(e.overflowing) or c is not t for e, c, t in zip(encodings, cut, texts, strict=True)]
        return {k: v for k, v in feeds.items() if k in self.input_names}, truncated

    def outputs(
        self, texts: Iterable[Any], *, batch_size: int | None = None
    ) -> tuple[np.ndarray, list[bool]]:
        """Raw model outputs (logits or embeddings) in input order, and the truncation flags.

        Texts are batched by length so that little compute is spent on padding; ``batch_size``
        defaults to what keeps answers batch-invariant for this model (see the module docstring).
        """
        _check_count("batch_size", batch_size, 1)
        batch_size = batch_size or self.batch_size
        checked = check_texts(texts)
        if self.bundle.manifest.source.get("type_vocab_size") == 1 and any(
            isinstance(t, tuple) for t in checked
        ):
            raise InputError("this model has one token type (type_vocab_size 1): it takes no sentence pairs")
        if not checked:  # no rows, as many columns as an answer has (an embedding: the hidden size)
            hidden = self.bundle.manifest.source.get("hidden_size", 0)
            width = len(self.labels) if self.task == "classify" else hidden
            return np.zeros((0, width), dtype=np.float32), []
        order = sorted(range(len(checked)), key=lambda i: len("".join(checked[i])))  # a pair: both
        results: list[np.ndarray] = [np.empty(0)] * len(checked)
        truncated = [False] * len(checked)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            feeds, flags = self.encode([checked[i] for i in chunk], chunk)
            try:
                out = self.session.run([self.bundle.manifest.output_name], feeds)[0]
            except EdgebertError:
                raise
            except Exception as exc:  # the runtimes' own errors: one path, naming what was run
                shape = "×".join(map(str, feeds["input_ids"].shape))
                raise BackendError(
                    f"the {self.precision} model failed on a batch of {shape} tokens: {exc}"
                ) from exc
            if self.task == "classify" and out.shape[-1] != len(self.labels):
                raise BundleError(
                    f"the {self.precision} model of '{self.bundle.path}' gives {out.shape[-1]} scores for "
                    f"the {len(self.labels)} labels its manifest lists: re-export the bundle"
                )
            for row, i in enumerate(chunk):
                results[i], truncated[i] = out[row], flags[row]
        return np.stack(results), truncated

    def predict(self, texts: Iterable[Any] | str, *, batch_size: int | None = None) -> list[Prediction]:
        """Labels and probabilities (classify) or embeddings (embed), one per text."""
        outputs, truncated = self.outputs([texts] if isinstance(texts, str) else texts, batch_size=batch_size)
        if self.task != "classify":
            return [
                Prediction(embedding=_own(v), truncated=t) for v, t in zip(outputs, truncated, strict=True)
            ]
        probs = softmax(outputs)
        return [
            Prediction(
                label=self.labels[int(p.argmax())],
                score=float(p.max()),
                scores={name: float(x) for name, x in zip(self.labels, p, strict=True)},
                truncated=t,
            )
            for p, t in zip(probs, truncated, strict=True)
        ]


def choose_model(bundle: Bundle, precision: str | None, backend: str | None) -> tuple[str, str]:
    """The bundle model to run and the backend to run it on (see ``Predictor``); a clear error for a
    backend that is unknown or not installed."""
    if backend is not None:
        require_backend(backend)
    models = bundle.models()
    if precision is None:
        wanted = BACKENDS[backend or "cpu"].prefers
    else:
        wanted = (f"openvino-{precision}", precision) if backend == "openvino" else (precision,)
    name = next((n for n in wanted if n in models), None)
    if precision is None and backend == "openvino" and name != "openvino-int8" and "int8" in models:
        # ONNX Runtime's dynamic INT8 runs slower on OpenVINO than fp32 does (DYNAMIC_INT8_ON_OPENVINO)
        onnx_int8 = "" if dynamic_int8(bundle, "int8") else ", or pass precision int8 for the ONNX INT8 model"
        log.warning(
            "bundle '%s' has no OpenVINO INT8 model, so OpenVINO runs its %s model: add one with "
            "`edgebert quantize BUNDLE --target openvino`%s",
            bundle.path,
            name,
            onnx_int8,
        )
    if name is None:
        ir = f"openvino-{precision}" if backend is None and f"openvino-{precision}" in models else None
        hint = f": its {ir} model runs with backend 'openvino'" if ir else ""
        raise BundleError(
            f"bundle '{bundle.path}' has no {' or '.join(repr(w) for w in wanted)} model "
            f"(it has: {', '.join(models)}){hint}"
        )
    suffix = Path(models[name].file).suffix
    backend = backend or ("openvino" if suffix == ".xml" else "cpu")
    if suffix not in BACKENDS[backend].suffixes:
        raise BundleError(
            f"model '{name}' is an OpenVINO IR: run it with backend 'openvino'"
            if suffix == ".xml"
            else f"model '{name}' ({models[name].file}) does not run on '{backend}'"
        )
    if backend == "openvino" and dynamic_int8(bundle, name):
        log.warning("bundle '%s': %s", bundle.path, DYNAMIC_INT8_ON_OPENVINO)
    if precision is None and name == "openvino-int8" and x86_without_vnni():
        log.warning("bundle '%s' runs its OpenVINO INT8 model; %s", bundle.path, OPENVINO_INT8_WITHOUT_VNNI)
    return name, backend


def dynamic_int8(bundle: Bundle, name: str) -> bool:
    """Whether bundle model ``name`` is ONNX dynamic INT8 (its activations' scales computed at run time)."""
    made = bundle.manifest.artifacts[name]
    return Path(made.file).suffix == ".onnx" and made.made_by.get("method") == "dynamic"


def _check_count(name: str, value: Any, least: int, most: int | None = None) -> None:
    """An ``InputError`` unless ``value`` is None or an int of at least ``least`` (and at most ``most``)."""
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < least or value > (most or value):
        within = f"{least}..{most}" if most else f"at least {least}"
        raise InputError(f"{name} must be a whole number {within}, not {value!r}")


def _check_openvino_options(backend: str, inference_precision: str | None, static_shapes: int) -> None:
    """An ``InputError`` for OpenVINO's options given to another backend, or a precision it lacks."""
    if backend != "openvino":
        given = [
            name
            for name, value in (
                ("inference_precision", inference_precision),
                ("static_shapes", static_shapes),
            )
            if value
        ]
        if given:
            raise InputError(
                f"{' and '.join(given)}: OpenVINO's options, not for backend '{backend}': ask for backend "
                "'openvino' (--backend openvino), or leave them out"
            )
    elif inference_precision not in (None, "f32", "bf16", "f16"):
        raise InputError(f"inference_precision must be f32, bf16 or f16, not {inference_precision!r}")


def batch_size_for(method: str | None) -> int:
    """The batch a model made by ``method`` runs at: one text per call for dynamic INT8, whose
    activation ranges (and so its answers) depend on the batch; 32 for the rest."""
    return 1 if method == "dynamic" else 32


def _cut(text: Text, limit: int) -> Text:
    """``text`` (each text of a pair) cut at ``limit`` characters; the same object where it is shorter."""
    if isinstance(text, tuple | list):  # a pair
        cut = (_cut(text[0], limit), _cut(text[1], limit))
        return text if cut[0] is text[0] and cut[1] is text[1] else cut  # type: ignore[return-value]
    return text[:limit] if len(text) > limit else text


def _own(row: np.ndarray) -> np.ndarray:
    """A read-only copy of one row of a batch's outputs: a result kept does not keep the batch."""
    copy = row.copy()
    copy.setflags(write=False)
    return copy


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def check_texts(texts: Iterable[Any]) -> list[Text]:
    """Texts as the tokenizer takes them; a clear error naming the position of anything else."""
    if isinstance(texts, str | bytes | dict | set | frozenset) or not isinstance(texts, Iterable):
        raise TextTypeError("texts must be a list of strings or (text, text_pair) pairs")
    if isinstance(texts, tuple) and len(texts) == 2 and all(isinstance(t, str) for t in texts):
        raise TextTypeError(
            "a tuple of two strings could be one sentence pair or two texts: pass [(text, text_pair)] "
            "for a pair, or a list of the two texts"
        )
    try:
        items = iter(texts)
    except TypeError:  # a 0-d array, say
        raise TextTypeError("texts must be a list of strings or (text, text_pair) pairs") from None
    checked: list[Text] = []
    for i, item in enumerate(items):
        if isinstance(item, tuple | list) and len(item) == 2:
            checked.append((_clean(item[0], i), _clean(item[1], i)))
        else:
            checked.append(_clean(item, i))
    return checked


def _clean(text: Any, position: int) -> str:
    if not isinstance(text, str):
        raise TextTypeError(
            f"item {position} is {type(text).__name__}, not text: pass strings or (text, text_pair) pairs"
        )
    if not text.strip():
        raise InputError(f"text {position} is empty: give it at least one word")
    # lone surrogates cannot be encoded as UTF-8 for the tokenizer: replace them
    return text.encode("utf-8", "replace").decode("utf-8")
