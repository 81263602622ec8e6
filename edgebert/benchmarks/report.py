"""Bench reports: a rich table for people, and report.json / report.csv / report.md with a
latency-vs-accuracy plot per shape (Pareto front marked) for ``--report DIR``."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Any

from rich.table import Table

from edgebert.atomic import write_json, write_text, writing
from edgebert.errors import MissingDependencyError, install

COLUMNS = (
    "target",
    "model",
    "computes in",
    "shape",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "vs fp32",
    "items/s",
    "accuracy",
    "agreement",
    "size MB",
    "peak MB",
    "first ms",
)


def with_fp32_ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``results``, each with its p50 latency as a ratio to fp32's on ONNX Runtime CPU at the same
    shape (or to the first row computing in fp32 there, from fp32 weights): ``p50_vs_fp32``, and that
    row's name in ``p50_vs``; None where the shape has no fp32 row."""
    fp32: dict[tuple[Any, Any], dict[str, Any]] = {}
    for r in results:
        exact = r["inference_precision"] in ("fp32", "f32") and not r.get("fp16_weights")
        if exact and (r["target"] == "cpu" or (r["batch_size"], r["seq_len"]) not in fp32):
            fp32[(r["batch_size"], r["seq_len"])] = r
    ratioed = []
    for r in results:
        reference = fp32.get((r["batch_size"], r["seq_len"]))
        ratio = r["latency_ms"]["p50"] / reference["latency_ms"]["p50"] if reference else None
        ratioed.append({**r, "p50_vs_fp32": ratio, "p50_vs": reference["name"] if reference else None})
    return ratioed


def rows(report: dict[str, Any]) -> list[list[str]]:
    """The report's results as table cells (``COLUMNS``)."""
    cells = []
    for r in report["results"]:
        latency = r["latency_ms"]
        ratio = f"{r['p50_vs_fp32']:.2f}×" if r.get("p50_vs_fp32") is not None else "–"
        cells.append(
            [
                r["target"],
                _model(r),
                r["inference_precision"],
                f"{r['batch_size']}×{r['seq_len']}",
                f"{latency['p50']:.2f}",
                f"{latency['p90']:.2f}",
                f"{latency['p99']:.2f}" + (" (noisy)" if r["noisy"] else ""),
                ratio,
                f"{r['throughput_per_s']:.1f}",
                f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "–",
                f"{r['agreement']:.4f}",
                f"{r['size_mb']:.1f}",
                f"{r['peak_rss_mb']:.0f}",
                f"{r['first_inference_ms']:.0f}",
            ]
        )
    return cells


def _model(row: dict[str, Any]) -> str:
    """The model's name, marked when OpenVINO ran it with shape-specialised compiled models, or its
    weights are stored in fp16."""
    static = " static" if row.get("static_shapes") else ""
    return row["model"] + static + (" (fp16 weights)" if row.get("fp16_weights") else "")


def caption(report: dict[str, Any]) -> str:
    first = report["results"][0]
    fewest, most = min(r["runs"] for r in report["results"]), max(r["runs"] for r in report["results"])
    runs = f"{fewest:,}" if fewest == most else f"{fewest:,}–{most:,}"
    return (
        f"shape: batch × tokens; latency percentiles ({report['percentile_method']}) over {runs} "
        f"timed runs a row ({report['timed_on']}) after "
        f"{report['timing']['warmup']} warm-up runs; peak MB: the process's peak resident memory; "
        "first ms: the first inference; static: compiled for each input shape; "
        f"agreement ({first['agreement_metric']}) with {first['agreement_with']} on {report['quality_data']}"
    )


def title(report: dict[str, Any]) -> str:
    system = report["system"]
    return (
        f"{report['task']} bundle on {', '.join(report['devices'])} · {system['cpu']} "
        f"({', '.join(system['instruction_sets']) or 'no AVX-512/VNNI'}) · threads: {report['threads']} "
        f"· ONNX Runtime INT8 kernels: {system['onnxruntime_int8_kernels']}"
    )


def render(report: dict[str, Any]) -> Table:
    table = Table(title=title(report), title_justify="left", caption=caption(report))
    for column in COLUMNS:
        named = column in ("target", "model", "computes in")
        table.add_column(column, justify="left" if named else "right", no_wrap=named)
    for cells in rows(report):
        table.add_row(*cells)
    return table


def markdown(report: dict[str, Any]) -> str:
    lines = [f"**{title(report)}**", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows(report)]
    lines += ["", caption(report)]
    lines += [f"- skipped: {line}" for line in report["skipped"]]
    lines += [f"- warning: {line}" for line in report["warnings"]]
    return "\n".join(lines) + "\n"


def flat_csv(report: dict[str, Any]) -> str:
    """One line per result; nested fields (latency) become ``latency_ms.p50`` columns."""
    flat = [_flatten(r) for r in report["results"]]
    fields = list(dict.fromkeys(k for row in flat for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return out.getvalue()


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: none is both as fast (lower x) and as accurate
    (higher y) and strictly better in one of them. Sorted by latency."""
    front = [
        i
        for i, (x, y) in enumerate(points)
        if not any(
            (ox <= x and oy >= y) and (ox < x or oy > y) for j, (ox, oy) in enumerate(points) if j != i
        )
    ]
    return sorted(front, key=lambda i: points[i][0])


def write_report(report: dict[str, Any], directory: Path) -> list[Path]:
    """report.json, report.csv, report.md and one latency-vs-accuracy PNG per shape in ``directory``."""
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError(f"--report draws plots with matplotlib: {install('report')}") from None
    matplotlib.use("Agg")
    shapes = dict.fromkeys((r["batch_size"], r["seq_len"]) for r in report["results"])
    plots = {f"latency-accuracy-b{b}-s{s}.png": (b, s) for b, s in shapes}
    names = ["report.json", "report.csv", "report.md", *plots]
    with writing(directory):
        directory.mkdir(parents=True, exist_ok=True)
        # every file made first, then all put in place: a failure leaves the earlier report whole
        with tempfile.TemporaryDirectory(prefix=".report.", dir=directory) as made:
            write_json(Path(made) / names[0], report)
            write_text(Path(made) / names[1], flat_csv(report))
            write_text(Path(made) / names[2], markdown(report))
            for name, shape in plots.items():
                _plot(
                    [r for r in report["results"] if (r["batch_size"], r["seq_len"]) == shape],
                    Path(made) / name,
                )
            for name in names:
                os.replace(Path(made) / name, directory / name)
        written = [directory / name for name in names]
        for stale in set(directory.glob("latency-accuracy-b*-s*.png")) - set(written):  # an earlier report's
            stale.unlink()
    return written


LABEL_HEIGHTS = (6, -11, 17, -22)  # points above (+) or below (-) each point, by latency rank


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    metric = "accuracy" if all(r["accuracy"] is not None for r in results) else "agreement"
    points = [(r["latency_ms"]["p50"], r[metric]) for r in results]
    front = pareto(points)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.scatter([x for x, _ in points], [y for _, y in points], color="tab:blue", zorder=2)
    axes.plot(
        [points[i][0] for i in front],
        [points[i][1] for i in front],
        "o--",
        color="tab:red",
        label="Pareto front",
        zorder=3,
    )
    middle = (min(x for x, _ in points) + max(x for x, _ in points)) / 2
    rank = {i: n for n, i in enumerate(sorted(range(len(points)), key=lambda i: points[i]))}
    for i, (r, (x, y)) in enumerate(zip(results, points, strict=True)):
        # neighbours (by latency) take turns at four heights, above and below, so that a long label
        # does not run into the next but one; labels right of the middle end at their point
        right = x > middle
        axes.annotate(
            f"{_model(r)} on {r['target']} ({r['inference_precision']})",
            (x, y),
            fontsize=7,
            xytext=(-4 if right else 4, LABEL_HEIGHTS[rank[i] % len(LABEL_HEIGHTS)]),
            textcoords="offset points",
            ha="right" if right else "left",
        )
    first = results[0]
    axes.set_xlabel("p50 latency (ms)")
    axes.set_ylabel(metric)
    shape = f"batch {first['batch_size']} × {first['seq_len']} tokens"
    axes.set_title("real text, one at a time" if first["seq_len"] == "real" else shape)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
