"""Rich tables for people: what a bundle holds, and what a Predictor answered."""

from __future__ import annotations

import re
from typing import Any

from rich.table import Table


def bundle_table(bundle: Any) -> Table:
    """Each artifact of a bundle with its size, parent and validation figures."""
    manifest = bundle.manifest
    labels = f" · labels: {', '.join(manifest.labels)}" if manifest.labels else ""
    table = Table(
        title=f"{bundle.path} · {manifest.task}{labels} · max_length {manifest.max_length}",
        title_justify="left",
    )
    for column in ("artifact", "file", "MB", "parent", "made by", "validation"):
        table.add_column(column, justify="right" if column == "MB" else "left")
    # an embedding model's agreement is the mean cosine of its embeddings with its parent's
    shown = {"agreement": "mean cosine"} if manifest.task == "embed" else {}
    for name, art in manifest.artifacts.items():
        size = (bundle.path / art.file).stat().st_size / 2**20
        figures = {k: v for k, v in art.validation.items() if isinstance(v, float)}
        table.add_row(
            name,
            art.file,
            f"{size:.1f}",
            art.parent or "–",
            made_by(art.made_by) if art.kind == "model" else "–",
            ", ".join(f"{shown.get(k, k)} {v:.4g}" for k, v in figures.items()) or "–",
        )
    return table


def made_by(made: dict[str, Any]) -> str:
    """How a model was made, in a line: its tool or method, calibration texts, the layers it keeps
    in float and whether its agreement target was met (the whole record is in ``info --json``)."""
    tool = str(made.get("tool", "–")).split()[0]
    method = made.get("method")  # NNCF's: "nncf" (older bundles say "dynamic", the CLI's default)
    parts = [f"{method} ({tool})" if method and not tool.startswith("nncf") else tool]
    calibrated = made.get("calibrated_on") or made.get("sensitivity", {}).get("measured_on")
    if calibrated:
        parts.append(f"on {calibrated}")
    if "converted_from" in made:
        parts.append(f"converted from {made['converted_from'].split(':')[0]}")
    if "kept_float" in made:
        parts.append(f"in float: {', '.join(_layer(n) for n in made['kept_float']) or 'none'}")
    if target := made.get("agreement_target"):
        parts.append(f"agreement target {target['target']} {'met' if target['met'] else 'NOT met'}")
    if made.get("weights") == "fp16":
        parts.append("fp16 weights")
    return " · ".join(parts)


def predictions_table(predictor: Any, items: list[Any], results: list[Any]) -> Table:
    """One row per text: its label and score, or the start of its embedding."""
    computes_in = getattr(predictor.session, "inference_precision", None)  # OpenVINO's, which may be bf16
    model = f"{predictor.precision} (computes in {computes_in})" if computes_in else predictor.precision
    table = Table(title=f"{predictor.task} · {model} · {predictor.bundle.path}", title_justify="left")
    table.add_column("text", overflow="ellipsis", max_width=60)
    if predictor.task == "classify":
        table.add_column("label")
        table.add_column("score", justify="right")
        for text, r in zip(items, results, strict=True):
            table.add_row(_shown(text), r.label, f"{r.score:.3f}")
    else:
        table.add_column("embedding")
        for text, r in zip(items, results, strict=True):
            vector = [] if r.embedding is None else [float(x) for x in r.embedding]
            shown = ", ".join(f"{x:.3f}" for x in vector[:4])
            table.add_row(_shown(text), f"dim {len(vector)}: [{shown}, …]")
    return table


def _shown(text: Any) -> str:
    """A text as the table shows it: a sentence pair as its two texts around a [SEP]."""
    return " [SEP] ".join(text) if isinstance(text, tuple) else str(text)


def _layer(node: str) -> str:
    """A node's layer (``layer.3``), or its name where it has none."""
    found = re.search(r"layer\.\d+", node)
    return found[0] if found else node
