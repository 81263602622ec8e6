"""The latency harness: one child process per model, so that load time, first-inference time and
peak memory belong to that model alone. No torch."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

PERCENTILE_METHOD = "linear"  # numpy's default: interpolates between the two nearest ranks


@dataclass(frozen=True)
class Timing:
    """How long to time each shape: warm-up runs are excluded; timing goes on until both
    ``min_runs`` and ``min_seconds`` are reached, or ``max_seconds`` has passed."""

    warmup: int = 10
    min_runs: int = 100
    min_seconds: float = 2.0
    max_seconds: float = 60.0


def measure_model(
    bundle: Path,
    precision: str,
    device: str,
    threads: int | None,
    shapes: list[tuple[int, int]],
    timing: Timing,
) -> dict[str, Any]:
    """Time ``precision`` of ``bundle`` at every (batch, seq_len) in a fresh process."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        future = pool.submit(_child, str(bundle), precision, device, threads, shapes, asdict(timing))
        return future.result()


def latency_stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    stats = {f"p{q}": float(np.percentile(ms, q, method="linear")) for q in (50, 90, 99)}
    return {**stats, "mean": float(ms.mean()), "min": float(ms.min()), "max": float(ms.max())}


def _child(
    bundle_path: str,
    precision: str,
    device: str,
    threads: int | None,
    shapes: list[tuple[int, int]],
    timing: dict,
) -> dict[str, Any]:
    from edgebert.bundle import Bundle
    from edgebert.runtime import load_tokenizer, open_session

    bundle = Bundle.load(bundle_path)
    start = time.perf_counter()
    session = open_session(bundle.file(precision), device, threads=threads)
    load_ms = (time.perf_counter() - start) * 1000
    inputs = {i.name for i in session.get_inputs()}
    tokenizer = load_tokenizer(bundle.file("tokenizer"), bundle.manifest.max_length)
    results, first_ms = [], None
    for batch, seq_len in shapes:
        feeds = {k: v for k, v in synthetic_feeds(tokenizer, batch, seq_len).items() if k in inputs}
        start = time.perf_counter()
        session.run(None, feeds)
        first_ms = first_ms if first_ms is not None else (time.perf_counter() - start) * 1000
        results.append({"batch_size": batch, "seq_len": seq_len, **_time(session, feeds, Timing(**timing))})
    return {
        "load_ms": load_ms,
        "first_inference_ms": first_ms,
        "peak_rss_mb": _peak_rss_mb(),
        "shapes": results,
    }


def synthetic_feeds(tokenizer: Any, batch: int, seq_len: int) -> dict[str, np.ndarray]:
    """``batch`` copies of real English text cut to exactly ``seq_len`` tokens, no padding."""
    from edgebert.samples import SENTENCES

    ids: list[int] = []
    while len(ids) < seq_len:
        ids += tokenizer.encode(" ".join(SENTENCES), add_special_tokens=False).ids
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    row = [cls, *ids[: seq_len - 2], sep] if cls is not None and sep is not None else ids[:seq_len]
    input_ids = np.tile(np.asarray(row, dtype=np.int64), (batch, 1))
    return {
        "input_ids": input_ids,
        "attention_mask": np.ones_like(input_ids),
        "token_type_ids": np.zeros_like(input_ids),
    }


def _time(session: Any, feeds: dict[str, np.ndarray], timing: Timing) -> dict[str, Any]:
    for _ in range(timing.warmup):
        session.run(None, feeds)
    seconds: list[float] = []
    began = time.perf_counter()
    while True:
        start = time.perf_counter()
        session.run(None, feeds)
        seconds.append(time.perf_counter() - start)
        elapsed = time.perf_counter() - began
        enough = len(seconds) >= timing.min_runs and elapsed >= timing.min_seconds
        if enough or elapsed >= timing.max_seconds:
            break
    batch = len(next(iter(feeds.values())))
    return {
        "latency_ms": latency_stats(seconds),
        "throughput_per_s": batch * len(seconds) / sum(seconds),
        "runs": len(seconds),
        "warmup_runs": timing.warmup,
        "timed_seconds": elapsed,
    }


def _peak_rss_mb() -> float:
    """This process's peak resident memory. On Linux VmHWM, which (unlike ru_maxrss) starts afresh
    at exec, so a spawned child does not report its parent's memory."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import psutil

    info = psutil.Process().memory_info()
    return getattr(info, "peak_wset", info.rss) / 2**20
