"""Bench reports for people: a rich table with each model's latency next to its fp32 reference."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def render(report: dict[str, Any]) -> Table:
    system = report["system"]
    title = (
        f"{report['task']} bundle on {report['device']} · {system['cpu']} "
        f"({', '.join(system['instruction_sets']) or 'no AVX-512/VNNI'}) · threads: {report['threads']}"
    )
    table = Table(title=title, title_justify="left")
    for column in ("model", "batch", "seq", "p50 ms", "p90 ms", "p99 ms", "vs fp32", "items/s"):
        table.add_column(column, justify="right" if column != "model" else "left")
    for column in ("accuracy", "agreement", "size MB", "peak RSS MB", "runs"):
        table.add_column(column, justify="right")
    fp32 = {(r["batch_size"], r["seq_len"]): r for r in report["results"] if r["precision"] == "fp32"}
    for r in report["results"]:
        latency = r["latency_ms"]
        reference = fp32.get((r["batch_size"], r["seq_len"]))
        ratio = f"{latency['p50'] / reference['latency_ms']['p50']:.2f}×" if reference else "–"
        table.add_row(
            r["precision"],
            str(r["batch_size"]),
            str(r["seq_len"]),
            f"{latency['p50']:.2f}",
            f"{latency['p90']:.2f}",
            f"{latency['p99']:.2f}",
            ratio,
            f"{r['throughput_per_s']:.1f}",
            f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "–",
            f"{r['agreement']:.4f}",
            f"{r['size_mb']:.1f}",
            f"{r['peak_rss_mb']:.0f}",
            str(r["runs"]),
        )
    first = report["results"][0]
    table.caption = (
        f"latency percentiles ({report['percentile_method']}) over timed runs after "
        f"{report['timing']['warmup']} warm-up runs; agreement ({first['agreement_metric']}) "
        f"with {first['agreement_with']} on {report['quality_data']}"
    )
    return table
