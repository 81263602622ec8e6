"""``edgebert bench``: latency, throughput, memory, size and accuracy of every model in a bundle on
every requested target (ONNX Runtime CPU, OpenVINO, ONNX Runtime CUDA), measured the same
way, in one run, in one report. No torch."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgebert import __version__
from edgebert.atomic import check_writable, locked, write_json
from edgebert.benchmarks.latency import (
    NOISY_SPREAD,
    PERCENTILE_METHOD,
    Shape,
    Subject,
    Timing,
    measure_models,
)
from edgebert.benchmarks.report import with_fp32_ratios
from edgebert.benchmarks.system import system_info
from edgebert.bundle import REPORTS, Bundle
from edgebert.data import encode_labels, read_examples
from edgebert.errors import BundleError, EdgebertError
from edgebert.fidelity import fidelity
from edgebert.runtime import BACKENDS, require_backend
from edgebert.runtime.backends import openvino_default_precision
from edgebert.runtime.predictor import DYNAMIC_INT8_ON_OPENVINO, dynamic_int8
from edgebert.samples import SENTENCES

__all__ = ["BenchConfig", "Timing", "bench"]

log = logging.getLogger("edgebert")
GPU_INT8 = (
    "ONNX Runtime's CUDA provider has no INT8 kernels for these models, and TensorRT, the GPU INT8 "
    "path, runs QuantizeLinear/DequantizeLinear graphs: edgebert's INT8 models are made of ONNX "
    "Runtime's CPU INT8 operators (MatMulIntegerToFloat; MatMulInteger after DynamicQuantizeLinear "
    "for dynamic INT8), which TensorRT does not run, so they are not timed on a GPU"
)

CPU_FP16 = "an fp16 model is for GPUs: bench times it with --device gpu"
DEFAULT_SEQ_LEN = 128  # tokens, unless the bundle's max_length is shorter


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. ``devices``: targets (cpu, openvino, gpu), each running the bundle models it
    reads. ``precisions``: model names (on openvino, ``int8`` means ``openvino-int8``). ``data``: a
    labeled file for accuracy (agreement alone without labels; the built-in sentences without it).
    ``real_text``: time the ``data`` texts one at a time at their own lengths, tokenization included,
    instead of synthetic batches of ``batch_sizes`` x ``seq_lens`` (by default 128 tokens, or the
    bundle's ``max_length`` where that is shorter). ``static_shapes``: OpenVINO's
    INT8 models run a second time with shape-specialised compiled models (see ``OpenVINOSession``)."""

    devices: tuple[str, ...] = ("cpu",)
    batch_sizes: tuple[int, ...] = (1, 8)
    seq_lens: tuple[int, ...] | None = None
    precisions: tuple[str, ...] | None = None
    data: str | None = None
    real_text: bool = False
    static_shapes: int = 0
    threads: int | None = None
    timing: Timing = field(default_factory=Timing)
    save: bool = True


def bench(bundle_path: str, config: BenchConfig = BenchConfig()) -> dict[str, Any]:
    """Measure every requested model of the bundle on every requested target; return (and save under
    reports/) the report."""
    for name, values in (("batch_sizes", config.batch_sizes), ("seq_lens", config.seq_lens or ())):
        if not isinstance(values, tuple | list) or not all(type(v) is int for v in values):
            raise EdgebertError(f"{name} must be a tuple of whole numbers, not {values!r}")
    bundle = Bundle.load(bundle_path)
    if config.save:  # before the timing, not after
        check_writable(bundle.path / REPORTS / "report.json", advice=": pass --no-save, or copy the bundle")
    for device in config.devices:
        require_backend(device)
    subjects, skipped = _subjects(bundle, config)
    seq_lens = config.seq_lens or (min(DEFAULT_SEQ_LEN, bundle.manifest.max_length),)
    outside = [s for s in seq_lens if not 2 <= s <= bundle.manifest.max_length]
    if outside and not config.real_text:
        raise EdgebertError(
            f"--seq-len {','.join(map(str, outside))}: must be 2..{bundle.manifest.max_length} "
            "(the bundle's max_length)"
        )
    if not config.batch_sizes or min(config.batch_sizes) < 1:
        raise EdgebertError("--batch-size must be at least 1")
    texts, labels = _quality_data(bundle, config)
    quality = _quality(bundle, subjects, texts, labels)
    shapes: list[Shape] = [(b, s) for b in config.batch_sizes for s in seq_lens]
    if config.real_text:
        shapes = [("real", tuple(texts))]
    log.info("timing %s, taking turns, on %s", ", ".join(subjects), _describe(shapes))
    timed = measure_models(subjects, config.threads, shapes, config.timing)
    # ONNX dynamic INT8 on OpenVINO: computed in float (DYNAMIC_INT8_ON_OPENVINO), said in a warning
    dequantized = [n for n, s in subjects.items() if s.device == "openvino" and dynamic_int8(bundle, s.model)]
    results = []
    for label, subject in subjects.items():
        measured = timed[label]
        art = bundle.manifest.artifacts[subject.model]
        precision = art.precision or "fp32"
        computed = measured.pop("inference_precision")
        in_float = label in dequantized
        computes = f"{computed} from int8 weights" if in_float else computes_in(precision, computed)
        for shape in measured.pop("shapes"):
            results.append(
                {
                    "name": f"{label} {_shape_name(shape)}",
                    "target": subject.device,
                    "model": subject.model,
                    "precision": precision,
                    "inference_precision": computes,
                    "static_shapes": subject.static_shapes,
                    "fp16_weights": art.made_by.get("weights") == "fp16",  # an IR's (--fp16-weights)
                    **shape,
                    **quality[label],
                    "size_mb": model_size_mb(bundle, subject.model),
                    **measured,
                }
            )
    results = with_fp32_ratios(results)
    report: dict[str, Any] = {
        "edgebert_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bundle": str(bundle.path),
        "task": bundle.manifest.task,
        "devices": list(config.devices),
        "threads": config.threads or "each runtime's default (one per physical core)",
        "percentile_method": PERCENTILE_METHOD,
        "quality_data": config.data or "built-in sentences (agreement only)",
        "timed_on": "real text, one at a time, tokenization included" if config.real_text else "synthetic",
        "timing": asdict(config.timing),
        "system": system_info(),
        "results": results,
        "skipped": skipped,
        "warnings": _warnings(results, config.timing, dequantized),
    }
    with locked(bundle.path) if config.save else nullcontext():  # not while a writer replaces it
        report["bundle_replaced"] = not bundle.unchanged()  # so its models are not the ones measured
        if config.save and not report["bundle_replaced"]:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            name = f"bench-{'-'.join(config.devices)}-{stamp}"
            taken = {p.stem for p in (bundle.path / REPORTS).glob(f"{name}*.json")}  # two runs in a second
            saved = bundle.path / REPORTS / f"{next(n for n in _numbered(name) if n not in taken)}.json"
            report["saved_to"] = str(saved)
            write_json(saved, report)
    if report["bundle_replaced"]:
        report["warnings"].append(
            f"bundle '{bundle.path}' was replaced or removed while this ran (by another edgebert "
            "command, say): these results are of the models it held, so nothing was saved into it"
        )
    return report


def _subjects(bundle: Bundle, config: BenchConfig) -> tuple[dict[str, Subject], list[str]]:
    """What runs where: each target's models, OpenVINO's both at f32 and at its default precision
    where that is not f32 (bf16 on CPUs with AVX-512 BF16; for an INT8 model, what its unquantized
    operations compute in), and why a model a target cannot run was left out."""
    models = bundle.models()
    wanted = config.precisions or tuple(models)
    missing = [p for p in wanted if p not in models and f"openvino-{p}" not in models]
    if missing:
        raise BundleError(
            f"bundle '{bundle.path}' has no {', '.join(missing)} model (it has: {', '.join(models)})"
        )
    subjects: dict[str, Subject] = {}
    skipped = []
    for device in config.devices:
        for name, art in models.items():
            named = name in wanted or (device == "openvino" and name.removeprefix("openvino-") in wanted)
            if not named or not _runs_on(device, name, art.file, art.precision, models):
                if named and device in ("cpu", "openvino") and art.precision == "fp16":
                    skipped.append(f"{device}:{name}: {CPU_FP16}")
                continue
            if device in ("gpu", "tensorrt") and art.precision == "int8":
                skipped.append(f"{device}:{name}: {GPU_INT8}")
                continue
            both = device == "openvino" and openvino_default_precision() != "f32"
            if both and art.precision in ("fp32", "int8"):
                subjects[f"openvino:{name}@f32"] = Subject(bundle.path, name, device, "f32")
            subjects[f"{device}:{name}"] = Subject(bundle.path, name, device)
            if device == "openvino" and config.static_shapes:
                static = Subject(bundle.path, name, device, static_shapes=config.static_shapes)
                subjects[f"openvino:{name}@static"] = static
    if not subjects:
        asked = f"the models asked for ({', '.join(wanted)})" if config.precisions else "the bundle's models"
        why = "".join(f"; {reason}" for reason in skipped)  # such as an fp16 model on the CPU
        raise BundleError(f"none of {asked} runs on {', '.join(config.devices)}{why}")
    return subjects, skipped


def _runs_on(device: str, name: str, file: str, precision: str | None, models: dict[str, Any]) -> bool:
    """Whether bench runs a model on a target: OpenVINO runs the IR models (an ONNX fp32 or INT8
    model where there is no IR of it, as the Predictor does), ONNX Runtime the ONNX models (fp16 on
    a GPU only)."""
    if Path(file).suffix not in BACKENDS[device].suffixes:
        return False
    if device == "openvino":
        return Path(file).suffix == ".xml" or (name in ("fp32", "int8") and f"openvino-{name}" not in models)
    return device != "cpu" or precision != "fp16"


def computes_in(precision: str, computed: str | None) -> str:
    """What a model computes in: its own precision on ONNX Runtime; on OpenVINO what the plugin says
    (an INT8 model's unquantized operations run at that precision)."""
    if computed is None:
        return precision
    return f"int8 + {computed}" if precision == "int8" else computed


def model_size_mb(bundle: Bundle, name: str) -> float:
    """A model's size on disk: its file, its weights file (an OpenVINO IR's .bin) and its other
    graph (an INT8 model's, its attention fused), if any."""
    parts = [name] + [
        n for n, a in bundle.manifest.artifacts.items() if a.kind in ("weights", "graph") and a.parent == name
    ]
    return sum(bundle.file(part).stat().st_size for part in parts) / 2**20


def _numbered(name: str) -> Iterator[str]:
    """``name``, then ``name-2``, ``name-3``..."""
    yield name
    yield from (f"{name}-{n}" for n in itertools.count(2))


def _shape_name(shape: dict[str, Any]) -> str:
    return "real" if shape["seq_len"] == "real" else f"b{shape['batch_size']} s{shape['seq_len']}"


def _describe(shapes: list[Shape]) -> str:
    if shapes[0][0] == "real":
        return f"{len(shapes[0][1])} real texts, one at a time"
    return ", ".join(f"batch {b} x {s} tokens" for b, s in shapes)


def _warnings(results: list[dict[str, Any]], timing: Timing, dequantized: list[str]) -> list[str]:
    """What the report must say beside its figures: OpenVINO's runs of ONNX dynamic INT8
    (``dequantized``), noisy rows, and rows that stopped short."""
    warnings = [f"{', '.join(dequantized)}: {DYNAMIC_INT8_ON_OPENVINO}"] if dequantized else []
    noisy = [r["name"] for r in results if r["noisy"]]
    if noisy:
        warnings.append(
            f"p99 was more than {NOISY_SPREAD:g}x p50 for {', '.join(noisy)}: the machine was busy or "
            "the timings are unstable; close other work and rerun, or read the ratios rather than the times"
        )
    short = [r["name"] for r in results if r["stopped_early"]]
    if short:
        warnings.append(
            f"timing stopped at --max-seconds ({timing.max_seconds:g} s a shape) before "
            f"{', '.join(short)} reached --min-runs {timing.min_runs} and --min-seconds "
            f"{timing.min_seconds:g}: see each row's runs"
        )
    return warnings


def _quality_data(bundle: Bundle, config: BenchConfig) -> tuple[list[Any], np.ndarray | None]:
    examples = read_examples(config.data, labeled=False) if config.data else None
    texts = examples.texts if examples else list(SENTENCES)
    labels = None
    if examples is not None and examples.labels is not None and bundle.manifest.task == "classify":
        labels = np.asarray(encode_labels(examples, bundle.manifest.labels or ()))
    return texts, labels


def _quality(
    bundle: Bundle, subjects: dict[str, Subject], texts: list[Any], labels: np.ndarray | None
) -> dict[str, dict[str, Any]]:
    """Accuracy on labeled data (classify) and agreement with the fp32 model on ONNX Runtime CPU."""
    reference_name = "fp32" if "fp32" in bundle.models() else next(iter(bundle.models()))
    log.info("running the models on %d texts for accuracy and agreement", len(texts))
    reference_subject = Subject(bundle.path, reference_name, "cpu")
    reference = reference_subject.predictor(bundle).outputs(texts)[0]
    quality = {}
    for label, subject in subjects.items():
        outputs = reference if subject == reference_subject else subject.predictor(bundle).outputs(texts)[0]
        agreement = fidelity(bundle.manifest.task, reference, outputs)
        quality[label] = {
            "accuracy": float(np.mean(outputs.argmax(-1) == labels)) if labels is not None else None,
            "agreement": agreement["agreement"],
            "agreement_metric": "argmax agreement" if bundle.manifest.task == "classify" else "mean cosine",
            "agreement_with": f"{reference_name} on ONNX Runtime CPU",
            "quality_samples": len(texts),
        }
    return quality
