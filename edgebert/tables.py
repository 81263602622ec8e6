"""Rich tables for people: what a bundle holds, and what a Predictor answered."""

from __future__ import annotations

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
    for column in ("artifact", "file", "MB", "parent", "validation"):
        table.add_column(column, justify="right" if column == "MB" else "left")
    for name, art in manifest.artifacts.items():
        size = (bundle.path / art.file).stat().st_size / 2**20
        figures = {k: v for k, v in art.validation.items() if isinstance(v, float)}
        table.add_row(
            name,
            art.file,
            f"{size:.1f}",
            art.parent or "–",
            ", ".join(f"{k} {v:.4g}" for k, v in figures.items()) or "–",
        )
    return table


def predictions_table(predictor: Any, items: list[Any], results: list[Any]) -> Table:
    """One row per text: its label and score, or the start of its embedding."""
    table = Table(
        title=f"{predictor.task} · {predictor.precision} · {predictor.bundle.path}", title_justify="left"
    )
    table.add_column("text", overflow="ellipsis", max_width=60)
    if predictor.task == "classify":
        table.add_column("label")
        table.add_column("score", justify="right")
        for text, r in zip(items, results, strict=True):
            table.add_row(str(text), r.label, f"{r.score:.3f}")
    else:
        table.add_column("embedding")
        for text, r in zip(items, results, strict=True):
            vector = [] if r.embedding is None else [float(x) for x in r.embedding]
            shown = ", ".join(f"{x:.3f}" for x in vector[:4])
            table.add_row(str(text), f"dim {len(vector)}: [{shown}, …]")
    return table
