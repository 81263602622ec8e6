"""OpenVINO IR from a bundle's validated fp32 ONNX model, and its INT8 model, each validated
against its parent.

``openvino-fp32``: the ONNX graph converted with fp32 weights (fp16 only when asked), checked at f32
against ONNX Runtime to the export tolerance. ``openvino-int8``: by default ``nncf.quantize`` with the
transformer model type, calibrated on the same texts as ONNX Runtime's INT8. With ``distill``, the
bundle's distillation-aware static INT8 model (``model.int8.onnx``: its smoothing, ranges and float
layers, chosen against the fp32 teacher) converted as it is: OpenVINO runs its QuantizeLinear /
DequantizeLinear pairs as INT8. On the SST-2 MiniLM that model scored 0.8956 on dev at f32 and
0.8911-0.8933 at OpenVINO's default bf16, where NNCF's accuracy control, the method used before,
scored 0.8911 at either, at the same speed (fp32 0.8968).

Its attention stays in float. Tried and left out: FakeQuantize on each attention's query, keys,
values (s8, largest magnitude on the calibration texts) and probabilities (u8), which OpenVINO runs
as one INT8 kernel. 2 threads, 8 × 128 tokens: 0.92-1.01× the time at f32 (five side-by-side
runs), 0.98-1.00× at bf16, 0.99× at 1 × 128 (f32); dev agreement with fp32 0.9897-0.9943 by
the calibration texts' ranges (0.9966 in float), a loss the calibration texts did not show
(0.9961-0.9980 against 0.9961). With the probabilities in float: 0.9954, but 1.06× the time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

from edgebert.bundle import Bundle, Manifest, artifact
from edgebert.errors import require
from edgebert.fidelity import close_outputs, fidelity
from edgebert.runtime import Predictor
from edgebert.samples import SENTENCES

FILES = {"openvino-fp32": "model.openvino.xml", "openvino-int8": "model.openvino-int8.xml"}
log = logging.getLogger("edgebert")


def openvino_into(stage: Path, manifest: Manifest, config: Any, *, int8: bool) -> Manifest:
    """Add the OpenVINO IR of ``stage``'s fp32 model (and with ``int8`` an INT8 IR: NNCF's, or for
    ``distill`` the converted distill INT8 model) to ``stage``; ``config`` is a ``QuantizeConfig``.
    Returns the updated manifest."""
    require("openvino", "openvino")
    import openvino as ov

    started = time.perf_counter()
    onnx_path = stage / manifest.artifacts["fp32"].file
    model = ov.convert_model(str(onnx_path))
    manifest = _save(
        stage,
        manifest,
        "openvino-fp32",
        model,
        precision="fp32",
        fp16_weights=config.fp16_weights,
        made_by={
            "tool": f"openvino.convert_model {ov.__version__}",
            "weights": "fp16" if config.fp16_weights else "fp32",
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    manifest = manifest.with_validation("openvino-fp32", _validate_fp32(stage, manifest, config))
    if not int8:
        return manifest
    from edgebert.quantizer import calibration_texts, validated

    texts, measured_on = calibration_texts(config)
    made_by: dict[str, Any]
    if config.method == "distill":
        manifest = _distill_int8(stage, manifest, config, texts)
        started = time.perf_counter()
        source = manifest.artifacts["int8"].file
        quantized = ov.convert_model(str(stage / source))
        made_by = {
            "tool": f"openvino.convert_model {ov.__version__}",
            "converted_from": f"{source}: its smoothing, ranges and float layers",
        }
    else:
        require("nncf", "openvino")
        import nncf

        log.info("quantizing the OpenVINO IR with NNCF on %s", measured_on)
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: keep stdout for results
            ir = ov.Core().read_model(str(stage / FILES["openvino-fp32"]))
            quantized = _nncf(ir, stage, manifest, texts)
        made_by = {"tool": f"nncf.quantize {nncf.__version__}", "model_type": "TRANSFORMER"}
    made_by = {
        **made_by,
        # the CLI's default method, dynamic, means NNCF's own (static) ranges here
        "method": "distill" if config.method == "distill" else "nncf",
        "calibrated_on": measured_on,
        "seconds": round(time.perf_counter() - started, 1),
    }
    parent = "int8" if config.method == "distill" else "fp32"
    manifest = _save(
        stage, manifest, "openvino-int8", quantized, precision="int8", made_by=made_by, parent=parent
    )
    return validated(stage, manifest, "openvino-int8", config)


def _distill_int8(stage: Path, manifest: Manifest, config: Any, texts: list[Any]) -> Manifest:
    """``manifest`` once ``stage`` has a distill INT8 model calibrated on ``texts`` to ``config``'s
    target: the bundle's own, or one made now (replacing any other INT8 model)."""
    from edgebert.quantizer import quantize_into, texts_digest

    made = manifest.artifacts["int8"].made_by if "int8" in manifest.artifacts else {}
    wanted = {"method": "distill", "texts": texts_digest(texts), "target": config.target_agreement}
    if _how_calibrated(made) == wanted and config.eval_data is None:
        log.info("converting the bundle's distill INT8 model to OpenVINO")
        return manifest
    log.info("making the distill INT8 model that OpenVINO will run")
    return quantize_into(stage, manifest, dataclasses.replace(config, target="onnx"))


def _how_calibrated(made_by: dict[str, Any]) -> dict[str, Any]:
    """The method, calibration texts (their digest) and agreement target of an INT8 model, from
    its ``made_by``."""
    return {
        "method": made_by.get("method"),
        "texts": made_by.get("calibration_texts_sha256"),
        "target": made_by.get("agreement_target", {}).get("target"),
    }


def _nncf(model: Any, stage: Path, manifest: Manifest, texts: list[Any]) -> Any:
    """NNCF's INT8 model, calibrated on ``texts`` tokenized as the Predictor does."""
    import nncf

    teacher = Predictor(Bundle(stage, manifest), precision="fp32")
    calibration = nncf.Dataset(texts, lambda text: teacher.encode([text])[0])
    return nncf.quantize(model, calibration, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(texts))


def _save(
    stage: Path,
    manifest: Manifest,
    name: str,
    model: Any,
    *,
    precision: str,
    made_by: dict[str, Any],
    parent: str = "fp32",
    fp16_weights: bool = False,
) -> Manifest:
    import openvino as ov

    xml = FILES[name]
    ov.save_model(model, str(stage / xml), compress_to_fp16=fp16_weights)
    weights = Path(xml).with_suffix(".bin").name
    manifest = manifest.with_artifact(
        name, artifact(stage, xml, precision=precision, parent=parent, made_by=made_by)
    )
    return manifest.with_artifact(f"{name}.bin", artifact(stage, weights, kind="weights", parent=name))


def _validate_fp32(stage: Path, manifest: Manifest, config: Any, tolerance: float = 1e-4) -> dict[str, Any]:
    """The IR at f32 against the ONNX model on ONNX Runtime, on the built-in sentences: to
    ``tolerance``, or with fp16 weights (which alone move MiniLM's logits by about 2e-3) by the
    fidelity test of every model of another precision."""
    from edgebert.quantizer import judged

    bundle = Bundle(stage, manifest)
    parent, _ = Predictor(bundle, precision="fp32").outputs(SENTENCES)
    child, _ = Predictor(bundle, precision="openvino-fp32", inference_precision="f32").outputs(SENTENCES)
    if config.fp16_weights:
        figures = judged(manifest.task, parent, child, config, "openvino-fp32 (fp16 weights)", "fp32")
        return {**figures, "inference_precision": "f32", "max_abs_diff": float(abs(parent - child).max())}
    worst = close_outputs(parent, child, tolerance, "the OpenVINO IR at f32 differs from the ONNX model")
    return {
        "against": "fp32",
        "inference_precision": "f32",
        "max_abs_diff": worst,
        "tolerance": tolerance,
        "agreement": fidelity(manifest.task, parent, child)["agreement"],
        "sentences": "built-in",
    }
