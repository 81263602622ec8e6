"""``edgebert bench``: latency, throughput, memory, size and accuracy of every model in a bundle,
measured the same way, in one run. No torch."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from edgebert import __version__
from edgebert.atomic import write_json
from edgebert.benchmarks.latency import PERCENTILE_METHOD, Timing, measure_models
from edgebert.benchmarks.system import system_info
from edgebert.bundle import REPORTS, Bundle
from edgebert.data import encode_labels, read_examples
from edgebert.errors import BundleError, EdgebertError
from edgebert.fidelity import fidelity
from edgebert.runtime import Predictor, require_backend
from edgebert.samples import SENTENCES

__all__ = ["BenchConfig", "Timing", "bench"]

log = logging.getLogger("edgebert")


@dataclass(frozen=True)
class BenchConfig:
    """What to measure. ``data`` is a labeled file for accuracy (agreement alone without labels);
    without it, agreement is measured on the built-in sentences."""

    device: str = "cpu"
    batch_sizes: tuple[int, ...] = (1, 8)
    seq_lens: tuple[int, ...] = (128,)
    precisions: tuple[str, ...] | None = None
    data: str | None = None
    threads: int | None = None
    timing: Timing = field(default_factory=Timing)
    save: bool = True


def bench(bundle_path: str, config: BenchConfig = BenchConfig()) -> dict[str, Any]:
    """Measure every requested precision of the bundle; return (and save under reports/) the report."""
    bundle = Bundle.load(bundle_path)
    require_backend(config.device)
    models = bundle.models()
    precisions = config.precisions or tuple(models)
    missing = [p for p in precisions if p not in models]
    if missing:
        raise BundleError(
            f"bundle '{bundle.path}' has no {', '.join(missing)} model (it has: {', '.join(models)})"
        )
    too_long = [s for s in config.seq_lens if not 2 <= s <= bundle.manifest.max_length]
    if too_long or not config.batch_sizes or min(config.batch_sizes) < 1:
        raise EdgebertError(
            f"--seq-len must be 2..{bundle.manifest.max_length} (the bundle's max_length) "
            "and --batch-size at least 1"
        )
    quality = _quality(bundle, precisions, config)
    shapes = [(b, s) for b in config.batch_sizes for s in config.seq_lens]
    described = ", ".join(f"batch {b} x {s} tokens" for b, s in shapes)
    log.info("timing %s on %s, taking turns, at %s", ", ".join(precisions), config.device, described)
    subjects = {p: (bundle.path, p) for p in precisions}
    timed = measure_models(subjects, config.device, config.threads, shapes, config.timing)
    results = []
    for precision in precisions:
        measured = timed[precision]
        size_mb = bundle.file(precision).stat().st_size / 2**20
        for shape in measured.pop("shapes"):
            results.append(
                {
                    "name": f"{precision} b{shape['batch_size']} s{shape['seq_len']}",
                    "precision": precision,
                    "device": config.device,
                    **shape,
                    **quality[precision],
                    "size_mb": size_mb,
                    **measured,
                }
            )
    report = {
        "edgebert_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bundle": str(bundle.path),
        "task": bundle.manifest.task,
        "device": config.device,
        "threads": config.threads or "onnxruntime default (one per physical core)",
        "percentile_method": PERCENTILE_METHOD,
        "quality_data": config.data or "built-in sentences (agreement only)",
        "timing": asdict(config.timing),
        "system": system_info(),
        "results": results,
    }
    if config.save:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        report["saved_to"] = str(bundle.path / REPORTS / f"bench-{config.device}-{stamp}.json")
        write_json(bundle.path / REPORTS / f"bench-{config.device}-{stamp}.json", report)
    return report


def _quality(bundle: Bundle, precisions: tuple[str, ...], config: BenchConfig) -> dict[str, dict[str, Any]]:
    """Accuracy on labeled data (classify) and agreement with fp32 for every precision."""
    examples = read_examples(config.data, labeled=False) if config.data else None
    texts = examples.texts if examples else list(SENTENCES)
    labels = None
    if examples is not None and examples.labels is not None and bundle.manifest.task == "classify":
        labels = np.asarray(encode_labels(examples, bundle.manifest.labels or ()))
    reference = "fp32" if "fp32" in bundle.models() else precisions[0]
    outputs = {}
    for precision in dict.fromkeys((reference, *precisions)):
        log.info("running %s on %d texts for accuracy and agreement", precision, len(texts))
        outputs[precision] = Predictor(bundle, precision=precision, device=config.device).outputs(texts)[0]
    quality = {}
    for precision in precisions:
        agreement = fidelity(bundle.manifest.task, outputs[reference], outputs[precision])
        quality[precision] = {
            "accuracy": float(np.mean(outputs[precision].argmax(-1) == labels))
            if labels is not None
            else None,
            "agreement": agreement["agreement"],
            "agreement_metric": "argmax agreement" if bundle.manifest.task == "classify" else "mean cosine",
            "agreement_with": reference,
            "quality_samples": len(texts),
        }
    return quality
