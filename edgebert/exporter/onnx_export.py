"""Export a BERT checkpoint to ONNX (dynamic batch and sequence axes), validate it against torch
on the runtime's own tokenization, optionally quantize, and write the bundle atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgebert import __version__
from edgebert.atomic import check_replaceable, staging
from edgebert.bundle import MANIFEST, Bundle, Manifest, artifact, write_manifest
from edgebert.errors import EdgebertError, ModelError, ValidationError, require
from edgebert.models import Checkpoint, resolve
from edgebert.runtime import Predictor
from edgebert.samples import SENTENCES

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# transformers' eager attention exports as MatMul, a constant scale, the mask Add and Softmax; its
# SDPA default exports the scale computed from shapes and applied to Q and K apart (60 more nodes
# in MiniLM), which took more time once quantized (benchmarks/results/export-variants.md)
ATTENTION = "eager"
FP32_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
log = logging.getLogger("edgebert")


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how.

    ``task`` None follows the checkpoint (a classification head means classify, else embed).
    ``fuse`` runs ONNX Runtime's transformer optimizer offline; it is off by default because the
    fused graph ran slower on our CPU in fp32 and int8 (benchmarks/results/cpu.md).
    ``max_length``: the longest input in tokens, longer texts cut; None takes sentence-transformers'
    ``max_seq_length`` where the checkpoint has one (256 for the default model), else 128.
    ``tolerance`` is the largest absolute difference from torch accepted for the fp32 model.
    ``calibration``: dynamic INT8, or static with ranges by minmax/percentile/entropy or chosen per
    tensor by distillation-aware search (distill), measured on ``calibration_samples`` texts of
    ``calibration_data`` (labels ignored); ``target_agreement``, ``eval_data``, ``max_drop``: see
    ``QuantizeConfig``.
    ``target``: ``onnx``, or ``openvino`` to add the OpenVINO IR of the validated ONNX model (and,
    with ``quantize="int8"``, its NNCF INT8 model instead of ONNX Runtime's); ``fp16_weights``
    stores the IR's weights in fp16. ``quantize="fp16"`` adds an fp16 ONNX model for GPUs.
    """

    model: str | None = None
    task: str | None = None
    quantize: str = "none"
    max_length: int | None = None
    opset: int = 17
    fuse: bool = False
    tolerance: float = 1e-4
    force: bool = False
    calibration: str = "dynamic"
    calibration_data: str | None = None
    calibration_samples: int = 1024
    target_agreement: float = 0.99
    eval_data: str | None = None
    max_drop: float = 0.5
    target: str = "onnx"
    fp16_weights: bool = False


def export(out: str | Path, config: ExportConfig = ExportConfig()) -> Bundle:
    """Export ``config.model`` into a new bundle at ``out`` and return it (loaded and verified)."""
    require("torch", "train")
    require("transformers", "train")
    require("onnx", "train")
    if config.quantize not in ("none", "int8", "fp16"):
        raise EdgebertError(f"unknown --quantize '{config.quantize}': use none, int8 or fp16")
    if config.target not in ("onnx", "openvino"):
        raise EdgebertError(f"unknown --target '{config.target}': use onnx or openvino")
    if config.max_length is not None and (
        not isinstance(config.max_length, int) or not 8 <= config.max_length <= 512
    ):
        raise EdgebertError(f"--max-length {config.max_length!r} is out of range: use 8 to 512")
    if not isinstance(config.opset, int) or not 17 <= config.opset <= 21:
        raise EdgebertError(f"--opset {config.opset!r} is out of range: use 17 to 21")
    if config.task not in (None, "classify", "embed"):
        raise EdgebertError(f"unknown --task '{config.task}': use classify or embed")
    from edgebert.exporter.first_token import first_token_only

    check_replaceable(Path(out), replace=config.force, marker=MANIFEST)  # before loading the model
    checkpoint = resolve(config.model)
    task = config.task or checkpoint.task
    if task == "classify" and checkpoint.task != "classify":
        raise ModelError(
            f"'{checkpoint.name}' has no classification head: export it with --task embed, "
            "or fine-tune it first with `edgebert train`"
        )
    if task == "classify":
        _check_head(checkpoint)
    elif heads := [a for a in checkpoint.config.get("architectures") or [] if a != "BertModel"]:
        log.warning(
            "'%s' is a %s: its head is not exported; the bundle embeds texts (%s pooling)",
            checkpoint.name,
            ", ".join(heads),
            checkpoint.pooling["mode"],
        )
    # by default, where sentence-transformers cuts this model's texts (if it says)
    length = config.max_length or max(8, checkpoint.max_seq_length or 128)
    length = _capped(length, checkpoint.config.get("max_position_embeddings"), "the model has {} positions")
    if config.quantize == "int8":
        from edgebert.quantizer import check_settings

        check_settings(_quantize_config(config), task)
    log.info("loading %s (%s) from %s", checkpoint.name, task, checkpoint.path)
    module, hf_tokenizer = _load_torch(checkpoint, task)
    declared = hf_tokenizer.model_max_length  # huge (1e30) where the checkpoint states none
    length = _capped(length, declared, "the checkpoint's tokenizer stops at {} tokens (model_max_length)")
    if (trained := checkpoint.trained_max_length) and trained != length:
        log.warning(
            "'%s' was fine-tuned, and its dev accuracy measured, on texts cut at %d tokens; this bundle "
            "cuts them at %d, so on longer texts it answers otherwise (--max-length %d matches training)",
            checkpoint.name,
            trained,
            length,
            trained,
        )
    config = dataclasses.replace(config, max_length=length)
    with staging(Path(out), replace=config.force) as stage:
        _save_tokenizer(hf_tokenizer, stage / TOKENIZER_FILE, length)
        log.info("exporting to ONNX (opset %d, dynamic batch and sequence axes)", config.opset)
        with first_token_only(module.model, task, checkpoint.pooling) as first_token:
            _onnx_export(module, hf_tokenizer, stage / FP32_FILE, config.opset, _output_name(task))
        made_by = _made_by(config, _fuse(stage / FP32_FILE, checkpoint) if config.fuse else None, first_token)
        manifest = _manifest(stage, checkpoint, task, length, made_by)
        log.info("validating the ONNX model against torch on %d sentences", len(SENTENCES))
        validation = _validate(Bundle(stage, manifest), module, hf_tokenizer, config.tolerance)
        manifest = manifest.with_artifact(
            "fp32", artifact(stage, FP32_FILE, **{**_fp32_fields(made_by), "validation": validation})
        )
        manifest = _derive(stage, manifest, config)
        write_manifest(stage, manifest)
    return Bundle.load(out)


def _capped(length: int, limit: Any, why: str) -> int:
    """``length`` at most ``limit`` (where that is a whole number of tokens), and a warning saying
    ``why`` where it was cut: longer inputs than the model or its tokenizer take."""
    if not isinstance(limit, int) or length <= limit:
        return length
    log.warning("--max-length %d: %s, so texts are cut there", length, why.format(limit))
    return limit


def _check_head(checkpoint: Checkpoint) -> None:
    """Refuse a classification head the runtime would read wrongly: its answers are one label of
    two or more, by softmax."""
    problem = checkpoint.config.get("problem_type")
    if problem == "multi_label_classification":
        raise ModelError(
            f"'{checkpoint.name}' is a multi-label classifier (sigmoid per label): edgebert's classifiers "
            "give one label by softmax; export its encoder with --task embed"
        )
    if problem == "regression" or len(checkpoint.labels) < 2:
        raise ModelError(
            f"'{checkpoint.name}' has a head of {len(checkpoint.labels)} output(s) (regression): edgebert "
            "exports classifiers of two labels or more; export its encoder with --task embed"
        )


def _quantize_config(config: ExportConfig) -> Any:
    """The ``QuantizeConfig`` of the models ``config`` derives from the fp32 one."""
    from edgebert.quantizer import QuantizeConfig

    return QuantizeConfig(
        method=config.calibration,
        calibration_data=config.calibration_data,
        calibration_samples=config.calibration_samples,
        target_agreement=config.target_agreement,
        eval_data=config.eval_data,
        max_drop=config.max_drop,
        target=config.target,
        fp16_weights=config.fp16_weights,
    )


def _derive(stage: Path, manifest: Manifest, config: ExportConfig) -> Manifest:
    """The models derived from the validated fp32 one that ``config`` asks for."""
    from edgebert.quantizer import quantize_into

    quantize = _quantize_config(config)
    if config.quantize == "fp16":
        from edgebert.exporter.fp16 import fp16_into

        manifest = fp16_into(stage, manifest, quantize)
    if config.quantize == "int8":
        nncf = config.target == "openvino" and config.calibration == "dynamic"
        log.info("quantizing to INT8 (%s, %s)", "NNCF" if nncf else config.calibration, config.target)
        return quantize_into(stage, manifest, quantize)
    if config.target == "openvino":
        from edgebert.exporter.openvino import openvino_into

        return openvino_into(stage, manifest, quantize, int8=False)
    return manifest


def _load_torch(checkpoint: Checkpoint, task: str) -> tuple[Any, Any]:
    import torch
    import transformers
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    transformers.logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint.path)
        auto = AutoModelForSequenceClassification if task == "classify" else AutoModel
        model = auto.from_pretrained(checkpoint.path, attn_implementation=ATTENTION)
    except (OSError, ValueError, TypeError) as exc:  # TypeError: a directory without tokenizer files
        raise ModelError(f"transformers could not load '{checkpoint.path}': {exc}") from exc
    if not tokenizer.is_fast:
        raise ModelError(f"'{checkpoint.path}' has no fast tokenizer (tokenizer.json or vocab.txt)")
    if checkpoint.lowercase:  # sentence-transformers lowercases texts before its tokenizer sees them
        from tokenizers import normalizers

        backend = tokenizer.backend_tokenizer
        own = [backend.normalizer] if backend.normalizer is not None else []
        backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), *own])
    model.eval()

    class Exported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            if task == "classify":
                return out.logits
            hidden = out.last_hidden_state
            if checkpoint.pooling["mode"] == "cls":
                pooled = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if checkpoint.pooling["normalize"]:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            return pooled

    return Exported().eval(), tokenizer


def _save_tokenizer(hf_tokenizer: Any, path: Path, max_length: int) -> None:
    from tokenizers import Tokenizer

    # A copy of the backend tokenizer with no fixed padding (the runtime pads to the longest text).
    tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.save(str(path))


def _output_name(task: str) -> str:
    return "logits" if task == "classify" else "embeddings"


def _onnx_export(module: Any, hf_tokenizer: Any, path: Path, opset: int, output: str) -> None:
    import torch

    sample = hf_tokenizer(list(SENTENCES[:2]), padding=True, return_tensors="pt")
    args = tuple(sample[name] if name in sample else torch.zeros_like(sample["input_ids"]) for name in INPUTS)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(INPUTS),
            output_names=[output],
            dynamic_axes={**axes, output: {0: "batch"}},
            opset_version=opset,
            dynamo=False,  # the TorchScript graph is the one ONNX Runtime's fusions and quantizer handle best
        )


def _fuse(path: Path, checkpoint: Checkpoint) -> dict[str, int]:
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(path),
        model_type="bert",
        num_heads=checkpoint.config["num_attention_heads"],
        hidden_size=checkpoint.config["hidden_size"],
    )
    optimized.save_model_to_file(str(path))
    return {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}


def _made_by(config: ExportConfig, fusion: dict[str, int] | None, first_token: bool) -> dict[str, Any]:
    made_by: dict[str, Any] = {
        "tool": "torch.onnx.export",
        "exporter": "torchscript",
        "opset": config.opset,
        "attention": f"transformers {ATTENTION}",
        "fusion": fusion,
    }
    if first_token:  # see edgebert.exporter.first_token
        made_by["last_layer"] = "first token only (the only one the head reads)"
    return made_by


def _fp32_fields(made_by: dict[str, Any]) -> dict[str, Any]:
    return {"precision": "fp32", "parent": None, "made_by": made_by}


def _manifest(
    stage: Path, checkpoint: Checkpoint, task: str, max_length: int, made_by: dict[str, Any]
) -> Manifest:
    import onnx
    import onnxruntime
    import tokenizers
    import torch
    import transformers

    return Manifest(
        task=task,
        labels=checkpoint.labels if task == "classify" else None,
        max_length=max_length,
        inputs=INPUTS,
        output=_output_name(task),
        output_name=_output_name(task),
        source=checkpoint.describe(),
        pooling=checkpoint.pooling if task == "embed" else None,
        artifacts={
            "tokenizer": artifact(stage, TOKENIZER_FILE, kind="tokenizer"),
            "fp32": artifact(stage, FP32_FILE, **_fp32_fields(made_by)),
        },
        versions={
            "edgebert": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "tokenizers": tokenizers.__version__,
        },
    )


def _validate(bundle: Bundle, module: Any, hf_tokenizer: Any, tolerance: float) -> dict[str, Any]:
    """Run the built-in sentences through torch and ONNX Runtime, both on the runtime's tokenization."""
    import numpy as np
    import torch

    predictor = Predictor(bundle, precision="fp32")
    worst = 0.0
    batches: list[list[Any]] = [list(SENTENCES[start : start + 8]) for start in range(0, len(SENTENCES), 8)]
    # a pair's second text is token type 1, which a model of one token type has not
    paired = bundle.manifest.source.get("type_vocab_size", 2) > 1
    pairs = list(zip(SENTENCES[:8], SENTENCES[8:16], strict=True)) if paired else []
    for batch in batches + ([pairs] if pairs else []):
        feeds, _ = predictor.encode(batch)
        first, second = zip(*batch, strict=True) if isinstance(batch[0], tuple) else (batch, None)
        reference = hf_tokenizer(
            list(first),
            list(second) if second else None,
            padding=True,
            truncation=True,
            max_length=bundle.manifest.max_length,
        )
        if not np.array_equal(feeds["input_ids"], np.array(reference["input_ids"])):
            raise ValidationError(
                "the exported tokenizer.json tokenizes differently from the checkpoint's tokenizer"
            )
        onnx_out = predictor.session.run(None, feeds)[0]
        with torch.no_grad():
            torch_out = module(*(torch.from_numpy(feeds[n]) for n in INPUTS)).numpy()
        worst = max(worst, float(np.abs(onnx_out - torch_out).max()))
    if worst > tolerance:
        raise ValidationError(
            f"the ONNX model differs from torch by up to {worst:.2e} on the built-in sentences "
            f"(tolerance {tolerance:.0e}): try another --opset, or report this checkpoint"
        )
    return {
        "against": "torch",
        "max_abs_diff": worst,
        "tolerance": tolerance,
        "sentences": len(SENTENCES),
        "pairs": len(pairs),
    }
