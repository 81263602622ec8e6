"""INT8 quantization of a bundle's fp32 model with ONNX Runtime's quantization tools, validated
against the fp32 parent on real sentences.

Dynamic or static INT8 with per-channel int8 weights (u8 activations, s8 weights: the VNNI path).
BERT's feed-forward outputs carry its largest activation outliers (Bondarenko et al., 2021), so the
FFN-output MatMuls are ranked by how much their quantization moves the outputs (against fp32 on the
calibration texts). Distillation-aware calibration returns the fewest of the most sensitive to
float that bring the INT8 model's agreement with fp32 on those texts to a target; the other methods
keep the most sensitive one; given a labeled held-out file, every method keeps the fewest that hold
accuracy within a budget (``edgebert.calibration.fallback``). The INT8 model also gets its graph
with the attention fused, which the Predictor runs for small calls
(``edgebert.calibration.attention``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgebert.atomic import staging, write_json
from edgebert.bundle import Bundle, Manifest, artifact, read_manifest, sha256, write_manifest
from edgebert.calibration import (
    STATIC_METHODS,
    StaticInt8,
    bounds,
    collect_ranges,
    in_float,
    quiet_root_logger,
)
from edgebert.calibration.attention import fuse_attention, up_to_tokens
from edgebert.calibration.fallback import choose_float_nodes
from edgebert.calibration.search import distill_ranges
from edgebert.data import same_data, sample_examples
from edgebert.errors import DataError, EdgebertError, SettingsError, ValidationError, require
from edgebert.fidelity import close_outputs, fidelity
from edgebert.runtime import Predictor
from edgebert.samples import SENTENCES

INT8_FILE = "model.int8.onnx"
FUSED_FILE = "model.int8-fused.onnx"  # the same model, its attention fused: for small calls
WEIGHTS_FILE = "model.int8.onnx.data"  # the INT8 model's weights, read by both its graphs
CALIBRATION_FILE = "calibration.json"
METHODS = ("dynamic", *STATIC_METHODS, "distill")
log = logging.getLogger("edgebert")


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize, and how far the INT8 model may drift from fp32 on the built-in sentences.

    The FFN-output MatMuls are ranked by sensitivity on ``calibration_samples`` texts drawn
    reproducibly (``seed``) from ``calibration_data`` (labels ignored), or on the built-in sentences
    without it. ``distill`` returns the fewest of the most sensitive to fp32 that bring the INT8
    model's agreement with fp32 on those texts to ``target_agreement`` (argmax agreement; mean cosine
    for embeddings); the other methods keep the most sensitive one, or ``keep_float`` of them. With
    ``eval_data`` (a labeled file, never the calibration file) every method returns the fewest that
    hold accuracy within ``max_drop`` points of fp32's.
    ``target``: ``onnx`` (ONNX Runtime INT8, ``model.int8.onnx``) or ``openvino`` (the OpenVINO IR and
    its NNCF INT8 model, see ``edgebert.exporter.openvino``; ``fp16_weights`` stores the IR's
    weights in fp16).
    Tolerances: classify, the share of sentences whose argmax label is unchanged (``min_agreement``)
    and the largest change of a class probability (``max_prob_diff``); embed, the mean and the
    smallest cosine similarity of the embeddings (``min_mean_cosine``, ``min_cosine``).
    """

    method: str = "dynamic"
    per_channel: bool = True
    reduce_range: bool = False
    keep_float: int | None = None
    calibration_data: str | None = None
    calibration_samples: int = 1024
    target_agreement: float = 0.99
    eval_data: str | None = None
    max_drop: float = 0.5
    seed: int = 0
    target: str = "onnx"
    fp16_weights: bool = False
    min_agreement: float = 0.9
    max_prob_diff: float = 0.25
    min_mean_cosine: float = 0.98
    min_cosine: float = 0.9


def quantize(bundle: str | Path, config: QuantizeConfig = QuantizeConfig()) -> Bundle:
    """Add ``model.int8.onnx`` (with ``target="openvino"``, the OpenVINO IR and its INT8 model) to an
    existing bundle, replacing any earlier one, atomically."""
    source = Bundle.load(bundle)
    check_settings(config, source.manifest.task)
    with staging(source.path, start_from=source.path) as stage:
        manifest = quantize_into(stage, read_manifest(stage), config)
        write_manifest(stage, manifest)
    return Bundle.load(source.path)


def check_settings(config: QuantizeConfig, task: str) -> None:
    """Refuse INT8 settings that no run can use, before any work."""
    samples = config.calibration_samples
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise SettingsError(f"--calibration-samples must be 1 or more, not {samples!r}")
    if not 0 <= config.target_agreement <= 1:
        raise SettingsError(f"--target-agreement must be within 0..1, not {config.target_agreement!r}")
    if config.eval_data is not None and task != "classify":
        raise DataError("--eval-data measures accuracy: it needs a classifier bundle")
    if config.target == "openvino" and config.method not in ("dynamic", "distill"):
        raise SettingsError(
            f"--calibration {config.method} is an ONNX Runtime method: for OpenVINO, NNCF measures "
            "its own ranges (leave --calibration at its default) or use --calibration distill"
        )


def quantize_into(stage: Path, manifest: Manifest, config: QuantizeConfig) -> Manifest:
    """Quantize ``stage``'s fp32 model into ``stage``, validate it and return the updated manifest."""
    if config.target == "openvino":
        from edgebert.exporter.openvino import openvino_into

        return openvino_into(stage, manifest, config, int8=True)
    if config.target != "onnx":
        raise EdgebertError(f"unknown target '{config.target}': use onnx or openvino")
    if config.method not in METHODS:
        choices = ", ".join(METHODS)
        raise EdgebertError(f"unknown quantization method '{config.method}': choose one of {choices}")
    require("onnx", "train")
    _large_blocks_back_to_the_os()
    started = time.perf_counter()
    fp32_path = stage / manifest.artifacts["fp32"].file
    work = stage / ".smoothing"  # distill may smooth the fp32 model first, here
    teacher = Predictor(Bundle(stage, manifest), precision="fp32")
    texts, measured_on = calibration_texts(config)
    if (
        config.method == "distill"
        and manifest.task == "classify"
        and config.calibration_data
        and not config.eval_data
    ):
        _warn_if_no_answer_may_change(len(texts), config.target_agreement)
    reference, _ = teacher.outputs(texts)
    teacher.session = None  # its tokenizer is all that is needed from here: free fp32's weights
    made_from_int8 = manifest.descendants("int8")  # an earlier model's calibration file, its IR
    remade = {"int8-fused", "int8.data"} | ({"calibration"} if config.method != "dynamic" else set())
    if lost := sorted(set(made_from_int8) - remade):
        log.warning("the INT8 model is replaced, and with it what was made from it: %s", ", ".join(lost))
    for name in made_from_int8:
        (stage / manifest.artifacts[name].file).unlink(missing_ok=True)
    manifest = manifest.without(made_from_int8)
    made_by: dict[str, Any]
    if config.method == "dynamic":
        made_by = {
            "tool": "onnxruntime.quantization.quantize_dynamic",
            "activations": "uint8, ranges computed at run time",
        }

        import onnx

        dynamic = _quantize_dynamic(fp32_path, config)

        def build(target: Path, exclude: list[str]) -> None:
            model = onnx.ModelProto()
            model.CopyFrom(dynamic)
            in_float(model, fp32_path, exclude)
            onnx.save(model, str(target))

    else:
        log.info("measuring activation ranges (%s) on %s", config.method, measured_on)
        if config.method == "distill":
            work.mkdir(exist_ok=True)
            smoothed = work / fp32_path.name
            ranges, static, report = distill_ranges(fp32_path, teacher, texts, reference, smoothed=smoothed)
        else:
            feeds = (teacher.encode([t])[0] for t in texts)
            ranges = collect_ranges(fp32_path, feeds, [config.method])[config.method]
            report = {"ranges": bounds(ranges)}
            static = StaticInt8.of(fp32_path, ranges)
        write_json(stage / CALIBRATION_FILE, {"method": config.method, "measured_on": measured_on, **report})
        made_by = {
            "tool": "onnxruntime.quantization.quantize_static (QDQ)",
            "activations": f"uint8, ranges fixed by {config.method} calibration on {measured_on}",
            "calibration_seconds": round(time.perf_counter() - started, 1),
            **{k: v for k, v in report.items() if k not in ("ranges", "chosen")},
        }

        def build(target: Path, exclude: list[str]) -> None:
            static.write(target, ranges, exclude)

    search = choose_float_nodes(fp32_path, build, teacher, texts, reference, config)
    search["sensitivity"]["measured_on"] = measured_on
    search["calibration_texts_sha256"] = texts_digest(texts)
    build(stage / INT8_FILE, search["kept_float"])
    shutil.rmtree(work, ignore_errors=True)  # (a failed run discards the whole stage)
    made_by = {
        **made_by,
        "method": config.method,
        "weights": "int8 per-channel" if config.per_channel else "int8 per-tensor",
        "reduce_range": config.reduce_range,
        **search,
        "seconds": round(time.perf_counter() - started, 1),
    }
    int8 = artifact(stage, INT8_FILE, precision="int8", parent="fp32", made_by=made_by)
    manifest = manifest.with_artifact("int8", int8)
    if (stage / CALIBRATION_FILE).is_file():
        calibration = artifact(
            stage, CALIBRATION_FILE, kind="calibration", parent="int8", made_by={"method": config.method}
        )
        manifest = manifest.with_artifact("calibration", calibration)
    manifest = validated(stage, manifest, "int8", config)
    return _with_fused_attention(stage, manifest)


def _with_fused_attention(stage: Path, manifest: Manifest, tolerance: float = 1e-4) -> Manifest:
    """Add the INT8 model's graph with each attention one operator (``QAttention``, or
    ``MultiHeadAttention`` for a first-token layer's), which the Predictor runs for small calls
    (``edgebert.calibration.attention``), the weights both graphs read in one file; both graphs are
    checked to give the INT8 model's outputs on the built-in sentences. ``manifest`` as it is when
    there is no attention to fuse."""
    int8 = Predictor(Bundle(stage, manifest), precision="int8")
    parent, _ = int8.outputs(SENTENCES, batch_size=8)  # padded batches: the mask is exercised
    fused, hidden = fuse_attention(stage / INT8_FILE, stage / FUSED_FILE, WEIGHTS_FILE)
    if not fused:
        return manifest
    worst = max(
        close_outputs(
            parent, int8.with_model(stage / file).outputs(SENTENCES, batch_size=8)[0], tolerance, what
        )
        for file, what in (
            (INT8_FILE, "the INT8 model with its weights in their own file differs from the INT8 model"),
            (FUSED_FILE, "the INT8 model with fused attention differs from the INT8 model"),
        )
    )
    made_by = {
        "tool": "edgebert.calibration.attention",
        "fused": fused,  # attentions that became each operator
        "up_to_tokens": up_to_tokens(hidden),
    }
    moved = dataclasses.replace(manifest.artifacts["int8"], sha256=sha256(stage / INT8_FILE))
    weights = artifact(
        stage, WEIGHTS_FILE, kind="weights", parent="int8", made_by={"read_by": ["int8", "int8-fused"]}
    )
    graph = artifact(stage, FUSED_FILE, kind="graph", precision="int8", parent="int8", made_by=made_by)
    validation = {"against": "int8", "max_abs_diff": worst, "tolerance": tolerance, "sentences": "built-in"}
    manifest = manifest.with_artifact("int8", moved).with_artifact("int8.data", weights)
    return manifest.with_artifact("int8-fused", graph).with_validation("int8-fused", validation)


def _large_blocks_back_to_the_os() -> None:
    """Have glibc map blocks of 4 MB and more on their own, so that freeing one returns it.

    Quantizing loads the model many times (ONNX Runtime's quantizer and calibrator, each probe), and
    glibc's heap keeps freed blocks of up to 32 MB (a bert-base weight matrix is 2-9 MB): the heap
    fragments and the process's memory grows from pass to pass. Measured on a bert-base-shaped
    model's distill calibration: 1,686 MB peak, 1,378 MB with this. Elsewhere (musl, macOS,
    Windows) nothing is changed.
    """
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD, bytes


def calibration_texts(config: QuantizeConfig) -> tuple[list[Any], str]:
    """The texts that guide quantization, and a description of where they came from."""
    if config.eval_data and config.calibration_data and same_data(config.eval_data, config.calibration_data):
        raise DataError(
            "--calibration-data and --eval-data are the same file (or copies of one): calibrate on "
            "training text and measure on held-out text"
        )
    if config.calibration_data is None:
        if config.method != "dynamic" or config.target == "openvino":  # ranges measured on them
            log.warning(
                "calibrating on the %d built-in sentences, too few for reliable ranges: give "
                "--calibration-data (training text)",
                len(SENTENCES),
            )
        return list(SENTENCES), f"{len(SENTENCES)} built-in sentences"
    texts = sample_examples(config.calibration_data, config.calibration_samples, config.seed).texts
    return texts, f"{len(texts)} texts of {config.calibration_data} (seed {config.seed})"


def _warn_if_no_answer_may_change(count: int, target: float) -> None:
    """Distill keeps layers in float until argmax agreement on the calibration texts reaches
    ``target``: on too few texts that allows no text to change its answer."""
    if target < 1 and int(count * (1 - target) + 1e-9) == 0:
        log.warning(
            "on %d calibration texts, agreement %g lets no text change its answer, so distill may keep "
            "many layers in float: draw %d or more with --calibration-samples",
            count,
            target,
            math.ceil(1 / (1 - target)),
        )


def texts_digest(texts: list[Any]) -> str:
    """What identifies calibration texts: their content, not the path they were read from."""
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()


def _quantize_dynamic(source: Path, config: QuantizeConfig, exclude: Iterable[str] = ()) -> Any:
    """ONNX Runtime's dynamic INT8 model of ``source`` (an ``onnx.ModelProto``), ``exclude`` in float.
    The MatMuls to keep in float are then chosen on copies of it (``in_float``): ONNX Runtime's
    per-channel weight quantization, a Python loop over the channels, runs once, not for every probe
    (about 3 s a run for MiniLM on an AVX2 EPYC: ``benchmarks/results/quantize-time.md``)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_root_logger(), tempfile.TemporaryDirectory(prefix=".dynamic-", dir=source.parent) as tmp:
        quantize_dynamic(
            source,
            Path(tmp) / "dynamic.onnx",
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            # the transformer optimizer's fused graph needs a default type for its contrib ops' weights
            extra_options={"DefaultTensorType": 1},
        )
        return onnx.load(str(Path(tmp) / "dynamic.onnx"))


def validated(stage: Path, manifest: Manifest, name: str, config: QuantizeConfig) -> Manifest:
    """``manifest`` with artifact ``name`` checked against its parent and the figures recorded."""
    return manifest.with_validation(name, validate_against_parent(Bundle(stage, manifest), name, config))


def validate_against_parent(bundle: Bundle, name: str, config: QuantizeConfig) -> dict[str, Any]:
    """Compare artifact ``name`` with its parent on the built-in sentences; raise beyond tolerance."""
    parent_name = bundle.manifest.artifacts[name].parent or "fp32"
    parent, _ = Predictor(bundle, precision=parent_name).outputs(SENTENCES)
    predictor = Predictor(bundle, precision=name)
    child, _ = predictor.outputs(SENTENCES)
    figures = judged(bundle.manifest.task, parent, child, config, name, parent_name)
    if predictor.backend == "openvino":  # at OpenVINO's default precision: what a Predictor gets
        figures["inference_precision"] = predictor.session.inference_precision
    return figures


def judged(
    task: str, parent: Any, child: Any, config: QuantizeConfig, name: str, parent_name: str
) -> dict[str, Any]:
    """The fidelity figures of ``child``'s outputs against ``parent``'s on the built-in sentences;
    raise where they are beyond ``config``'s tolerance."""
    figures = fidelity(task, parent, child)
    if task == "classify":
        ok = figures["agreement"] >= config.min_agreement and figures["max_prob_diff"] <= config.max_prob_diff
        stated = f"agreement >= {config.min_agreement}, max_prob_diff <= {config.max_prob_diff}"
    else:
        ok = figures["agreement"] >= config.min_mean_cosine and figures["min_cosine"] >= config.min_cosine
        stated = f"mean cosine >= {config.min_mean_cosine}, min_cosine >= {config.min_cosine}"
    shown = ", ".join(f"{k} {v:.4f}" for k, v in figures.items() if k != "n")
    if not ok:
        raise ValidationError(
            f"the {name} model drifts too far from {parent_name} on the built-in sentences ({shown}; "
            f"tolerance {stated}): keep the fp32 model (--quantize none) or report this model"
        )
    return {**figures, "against": parent_name, "tolerance": stated, "sentences": "built-in"}
