"""The latency harness. Each model runs in a child process of its own, so that its load time,
first-inference time and peak memory are its alone; the children are timed in alternating blocks,
so that a machine that slows down mid-run slows every model alike and the ratios stay fair.
No torch."""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

PERCENTILE_METHOD = "linear"  # numpy's default: interpolates between the two nearest ranks


@dataclass(frozen=True)
class Timing:
    """How long to time each shape: warm-up runs are excluded; timing goes on until every model has
    both ``min_runs`` runs and ``min_seconds`` of timed runs, or ``max_seconds`` have passed.
    Models take turns of ``turn_seconds``, with a ``pause`` between turns in which the model that
    just ran lets its thread pool stop spinning (else it steals cores from the next one)."""

    warmup: int = 10
    min_runs: int = 100
    min_seconds: float = 2.0
    max_seconds: float = 60.0
    turn_seconds: float = 0.25
    pause: float = 0.05


def measure_models(
    models: dict[str, tuple[Path, str]],
    device: str,
    threads: int | None,
    shapes: list[tuple[int, int]],
    timing: Timing,
) -> dict[str, dict[str, Any]]:
    """Time each model, named by a label and given as (bundle, precision), at every (batch, seq_len),
    taking turns; one child process per model."""
    context = multiprocessing.get_context("spawn")
    children: dict[str, tuple[Any, Connection]] = {}
    try:
        for label, (bundle, precision) in models.items():
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=_child, args=(child_end, str(bundle), precision, device, threads), daemon=True
            )
            process.start()
            children[label] = (process, parent_end)
        results = {p: _receive(conn) for p, (_, conn) in children.items()}
        for p in results:
            results[p]["shapes"] = []
        for batch, seq_len in shapes:
            timings = _time_shape({p: conn for p, (_, conn) in children.items()}, batch, seq_len, timing)
            for p, seconds in timings.items():
                results[p]["shapes"].append(_summary(batch, seq_len, seconds, timing))
        for p, (_, conn) in children.items():
            conn.send(("stop",))
            results[p].update(_receive(conn))
        return results
    finally:
        for process, conn in children.values():
            conn.close()
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


def _time_shape(
    conns: dict[str, Connection], batch: int, seq_len: int, timing: Timing
) -> dict[str, list[float]]:
    for conn in conns.values():
        conn.send(("warmup", batch, seq_len, timing.warmup))
        _receive(conn)
    seconds: dict[str, list[float]] = {p: [] for p in conns}
    began = time.perf_counter()
    while time.perf_counter() - began < timing.max_seconds:
        for p, conn in conns.items():
            time.sleep(timing.pause)
            conn.send(("time", timing.turn_seconds))
            seconds[p] += _receive(conn)["seconds"]
        if all(len(s) >= timing.min_runs and sum(s) >= timing.min_seconds for s in seconds.values()):
            break
    return seconds


def _summary(batch: int, seq_len: int, seconds: list[float], timing: Timing) -> dict[str, Any]:
    return {
        "batch_size": batch,
        "seq_len": seq_len,
        "latency_ms": latency_stats(seconds),
        "throughput_per_s": batch * len(seconds) / sum(seconds),
        "runs": len(seconds),
        "warmup_runs": timing.warmup,
    }


def latency_stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    stats = {f"p{q}": float(np.percentile(ms, q, method="linear")) for q in (50, 90, 99)}
    return {**stats, "mean": float(ms.mean()), "min": float(ms.min()), "max": float(ms.max())}


def _receive(conn: Connection) -> dict[str, Any]:
    reply = conn.recv()
    if isinstance(reply, BaseException):
        raise reply
    return reply


def _child(conn: Connection, bundle_path: str, precision: str, device: str, threads: int | None) -> None:
    """Serve timing requests for one model until told to stop; errors are sent back to the parent."""
    try:
        from edgebert.bundle import Bundle
        from edgebert.runtime import load_tokenizer, open_session

        bundle = Bundle.load(bundle_path)
        start = time.perf_counter()
        session = open_session(bundle.file(precision), device, threads=threads)
        conn.send({"load_ms": (time.perf_counter() - start) * 1000})
        inputs = {i.name for i in session.get_inputs()}
        tokenizer = load_tokenizer(bundle.file("tokenizer"), bundle.manifest.max_length)
        feeds: dict[str, np.ndarray] = {}
        first_ms = None
        while True:
            request = conn.recv()
            if request[0] == "stop":
                conn.send({"first_inference_ms": first_ms, "peak_rss_mb": _peak_rss_mb()})
                return
            if request[0] == "warmup":
                _, batch, seq_len, warmup = request
                feeds = {k: v for k, v in synthetic_feeds(tokenizer, batch, seq_len).items() if k in inputs}
                start = time.perf_counter()
                session.run(None, feeds)
                first_ms = first_ms if first_ms is not None else (time.perf_counter() - start) * 1000
                for _ in range(warmup):
                    session.run(None, feeds)
                conn.send({})
            else:
                seconds: list[float] = []
                while not seconds or sum(seconds) < request[1]:
                    start = time.perf_counter()
                    session.run(None, feeds)
                    seconds.append(time.perf_counter() - start)
                conn.send({"seconds": seconds})
    except BaseException as exc:  # the parent re-raises it
        conn.send(exc)


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
