"""OpenVINO IR from a bundle's validated fp32 ONNX model, and INT8 through NNCF, each validated
against that ONNX model.

``openvino-fp32``: the ONNX graph converted with fp32 weights (fp16 only when asked), checked at f32
against ONNX Runtime to the export tolerance. ``openvino-int8``: ``nncf.quantize`` with the
transformer model type, calibrated on the same texts as ONNX Runtime's INT8; with ``distill``,
``nncf.quantize_with_accuracy_control`` returns the fewest layers to float that keep the INT8 model's
agreement with the fp32 teacher on those texts (no labels) at the target.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from edgebert.bundle import Bundle, Manifest, artifact
from edgebert.errors import EdgebertError, ValidationError, require
from edgebert.fidelity import fidelity
from edgebert.runtime import Predictor
from edgebert.samples import SENTENCES

FILES = {"openvino-fp32": "model.openvino.xml", "openvino-int8": "model.openvino-int8.xml"}
NNCF_METHODS = ("dynamic", "distill")  # dynamic (the CLI default) means NNCF's own ranges
log = logging.getLogger("edgebert")


def openvino_into(stage: Path, manifest: Manifest, config: Any, *, int8: bool) -> Manifest:
    """Add the OpenVINO IR of ``stage``'s fp32 model (and its NNCF INT8 model with ``int8``) to
    ``stage``; ``config`` is a ``QuantizeConfig``. Returns the updated manifest."""
    require("openvino", "openvino")
    import openvino as ov

    if int8 and config.method not in NNCF_METHODS:
        raise EdgebertError(
            f"--calibration {config.method} is an ONNX Runtime method: for OpenVINO, NNCF measures "
            "its own ranges (leave --calibration at its default) or use --calibration distill"
        )
    started = time.perf_counter()
    onnx_path = stage / manifest.artifacts["fp32"].file
    model = ov.convert_model(str(onnx_path))
    manifest = _save(
        stage,
        manifest,
        "openvino-fp32",
        model,
        fp16_weights=config.fp16_weights,
        precision="fp32",
        made_by={
            "tool": f"openvino.convert_model {ov.__version__}",
            "weights": "fp16" if config.fp16_weights else "fp32",
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    manifest = manifest.with_validation("openvino-fp32", _validate_fp32(stage, manifest))
    if not int8:
        return manifest
    require("nncf", "openvino")
    from edgebert.quantizer import calibration_texts, validated

    texts, measured_on = calibration_texts(config)
    log.info("quantizing the OpenVINO IR with NNCF (%s) on %s", config.method, measured_on)
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: keep stdout for results
        quantized, made_by = _nncf(
            ov.Core().read_model(str(stage / FILES["openvino-fp32"])), stage, manifest, texts, config
        )
    made_by = {
        **made_by,
        "calibrated_on": measured_on,
        "seconds": round(time.perf_counter() - started, 1),
    }
    manifest = _save(
        stage, manifest, "openvino-int8", quantized, fp16_weights=False, precision="int8", made_by=made_by
    )
    return validated(stage, manifest, "openvino-int8", config)


def _nncf(
    model: Any, stage: Path, manifest: Manifest, texts: list[Any], config: Any
) -> tuple[Any, dict[str, Any]]:
    """The NNCF INT8 model and how it was made."""
    import nncf

    teacher = Predictor(Bundle(stage, manifest), precision="fp32")
    calibration = nncf.Dataset(texts, lambda text: teacher.encode([text])[0])
    made_by: dict[str, Any] = {
        "tool": f"nncf.quantize {nncf.__version__}",
        "model_type": "TRANSFORMER",
        "method": config.method,
    }
    if config.method != "distill":
        quantized = nncf.quantize(
            model, calibration, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(texts)
        )
        return quantized, made_by
    reference, _ = teacher.outputs(texts)
    task = manifest.task

    def agreement(compiled: Any, items: Iterable[tuple[Any, np.ndarray]]) -> float:
        pairs = [(compiled(teacher.encode([text])[0])[0][0], expected) for text, expected in items]
        return fidelity(task, np.stack([e for _, e in pairs]), np.stack([o for o, _ in pairs]))["agreement"]

    validation = nncf.Dataset(
        list(zip(texts, reference, strict=True)), lambda item: teacher.encode([item[0]])[0]
    )
    quantized = nncf.quantize_with_accuracy_control(
        model,
        calibration,
        validation,
        validation_fn=agreement,
        max_drop=1.0 - config.target_agreement,
        drop_type=nncf.DropType.ABSOLUTE,
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(texts),
    )
    import openvino as ov

    achieved = agreement(ov.compile_model(quantized, "CPU"), zip(texts, reference, strict=True))
    made_by["tool"] = f"nncf.quantize_with_accuracy_control {nncf.__version__}"
    made_by["agreement_target"] = {
        "target": config.target_agreement,
        "achieved": achieved,
        "met": achieved >= config.target_agreement,
        "measured_on": "the calibration texts",
    }
    return quantized, made_by


def _save(
    stage: Path,
    manifest: Manifest,
    name: str,
    model: Any,
    *,
    fp16_weights: bool,
    precision: str,
    made_by: dict[str, Any],
) -> Manifest:
    import openvino as ov

    xml = FILES[name]
    ov.save_model(model, str(stage / xml), compress_to_fp16=fp16_weights)
    weights = Path(xml).with_suffix(".bin").name
    manifest = manifest.with_artifact(
        name, artifact(stage, xml, precision=precision, parent="fp32", made_by=made_by)
    )
    return manifest.with_artifact(f"{name}.bin", artifact(stage, weights, kind="weights", parent=name))


def _validate_fp32(stage: Path, manifest: Manifest, tolerance: float = 1e-4) -> dict[str, Any]:
    """The IR at f32 against the ONNX model on ONNX Runtime, on the built-in sentences."""
    bundle = Bundle(stage, manifest)
    parent, _ = Predictor(bundle, precision="fp32").outputs(SENTENCES)
    child, _ = Predictor(bundle, precision="openvino-fp32", inference_precision="f32").outputs(SENTENCES)
    worst = float(np.abs(parent - child).max())
    if worst > tolerance * max(1.0, float(np.abs(parent).max())):
        raise ValidationError(
            f"the OpenVINO IR differs from the ONNX model by up to {worst:.2e} at f32 "
            f"(tolerance {tolerance:.0e}): report this model"
        )
    return {
        "against": "fp32",
        "inference_precision": "f32",
        "max_abs_diff": worst,
        "tolerance": tolerance,
        "agreement": fidelity(manifest.task, parent, child)["agreement"],
        "sentences": "built-in",
    }
