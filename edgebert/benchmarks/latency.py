"""The latency harness. Each model runs in a child process of its own, so that its load time,
first-inference time and peak memory are its alone; the children are timed in alternating blocks,
so that a machine that slows down mid-run slows every model alike and the ratios stay fair.
No torch."""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

PERCENTILE_METHOD = "linear"  # numpy's default: interpolates between the two nearest ranks
NOISY_SPREAD = 2.0  # p99 / p50 above this: the machine was busy, or the model's time is unstable


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


@dataclass(frozen=True)
class Subject:
    """One thing to time: a bundle's model on a device, with the Predictor's options: OpenVINO's
    ``inference_precision`` hint (None: the runtime's default), ``pad_to_multiple_of`` (None: the
    backend's) and ``static_shapes``."""

    bundle: Path
    model: str
    device: str
    inference_precision: str | None = None
    pad_to_multiple_of: int | None = None
    static_shapes: int = 0

    def predictor(self, bundle: Any = None, threads: int | None = None) -> Any:
        """A Predictor running this subject (``bundle``: the loaded Bundle, if at hand)."""
        from edgebert.runtime import Predictor

        return Predictor(
            bundle or self.bundle,
            precision=self.model,
            backend=self.device,
            threads=threads,
            inference_precision=self.inference_precision,
            pad_to_multiple_of=self.pad_to_multiple_of,
            static_shapes=self.static_shapes,
        )


Shape = tuple[int, int] | tuple[str, tuple[Any, ...]]  # (batch, seq_len), or ("real", texts)


def measure_models(
    subjects: dict[str, Subject],
    threads: int | None,
    shapes: list[Shape],
    timing: Timing,
    others: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Time each subject, named by a label, at every shape, taking turns; one child process each.
    A shape is (batch, seq_len) of synthetic text, or ("real", texts): one text per call at its own
    length, tokenization included, as a device sees them. ``others``: timers started elsewhere that
    answer the requests ``_child`` answers (``send``, ``recv``, ``close``), to take turns with them
    (another runtime in another environment, say); they are closed at the end."""
    context = multiprocessing.get_context("spawn")
    children: dict[str, tuple[Any, Any]] = {label: (None, timer) for label, timer in (others or {}).items()}
    try:
        for label, subject in subjects.items():
            parent_end, child_end = context.Pipe()
            process = context.Process(target=_child, args=(child_end, subject, threads), daemon=True)
            process.start()
            children[label] = (process, parent_end)
        results = {p: _receive(conn) for p, (_, conn) in children.items()}
        for p in results:
            results[p]["shapes"] = []
        for shape in shapes:
            timings, short = _time_shape({p: conn for p, (_, conn) in children.items()}, shape, timing)
            for p, seconds in timings.items():
                results[p]["shapes"].append({**_summary(shape, seconds, timing), "stopped_early": p in short})
        for p, (_, conn) in children.items():
            conn.send(("stop",))
            results[p].update(_receive(conn))
        return results
    finally:
        for process, conn in children.values():
            conn.close()
            if process is None:
                continue
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


def _time_shape(
    conns: dict[str, Connection], shape: Shape, timing: Timing
) -> tuple[dict[str, list[float]], set[str]]:
    """Each model's timed runs of ``shape``, and the models ``max_seconds`` stopped before they had
    their ``min_runs`` and ``min_seconds``."""
    for conn in conns.values():
        conn.send(("warmup", shape, timing.warmup))
        _receive(conn)
    seconds: dict[str, list[float]] = {p: [] for p in conns}
    began = time.perf_counter()
    while time.perf_counter() - began < timing.max_seconds:
        for p, conn in conns.items():
            time.sleep(timing.pause)
            conn.send(("time", timing.turn_seconds))
            seconds[p] += _receive(conn)["seconds"]
        short = {p for p, s in seconds.items() if len(s) < timing.min_runs or sum(s) < timing.min_seconds}
        if not short:
            break
    if shape[0] == "real":  # every model on the same texts in the same order: as many as the slowest ran
        fewest = min(len(s) for s in seconds.values())
        seconds = {p: s[:fewest] for p, s in seconds.items()}
    return seconds, short


def _summary(shape: Shape, seconds: list[float], timing: Timing) -> dict[str, Any]:
    batch, seq_len = (1, "real") if shape[0] == "real" else shape
    stats = latency_stats(seconds)
    return {
        "batch_size": batch,
        "seq_len": seq_len,
        "latency_ms": stats,
        "throughput_per_s": int(batch) * len(seconds) / sum(seconds),
        "runs": len(seconds),
        "timed_seconds": sum(seconds),
        "warmup_runs": timing.warmup,
        "noisy": noisy(stats) if seq_len != "real" else False,  # real text: the spread is the texts' lengths
    }


def noisy(stats: dict[str, float], limit: float = NOISY_SPREAD) -> bool:
    """Whether the spread of the timings (p99 / p50 above ``limit``) says the machine was busy."""
    return stats["p99"] > limit * stats["p50"]


def latency_stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    stats = {f"p{q}": float(np.percentile(ms, q, method="linear")) for q in (50, 90, 99)}
    return {**stats, "mean": float(ms.mean()), "min": float(ms.min()), "max": float(ms.max())}


def _receive(conn: Connection) -> dict[str, Any]:
    reply = conn.recv()
    if isinstance(reply, BaseException):
        raise reply
    return reply


def _child(conn: Connection, subject: Subject, threads: int | None) -> None:
    """Serve timing requests for one model until told to stop; errors are sent back to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it closes the pipe, this ends
    try:
        from edgebert.bundle import Bundle
        from edgebert.runtime import computed_in

        bundle = Bundle.load(subject.bundle)
        start = time.perf_counter()
        predictor = subject.predictor(bundle, threads)
        conn.send(
            {
                "load_ms": (time.perf_counter() - start) * 1000,
                "inference_precision": computed_in(predictor.session),
            }
        )
        step: Callable[[], Any] = lambda: None  # noqa: E731
        first_ms = None
        while True:
            request = conn.recv()
            if request[0] == "stop":
                conn.send({"first_inference_ms": first_ms, "peak_rss_mb": _peak_rss_mb()})
                return
            if request[0] == "warmup":
                _, shape, warmup = request
                step = _step(predictor, shape)
                start = time.perf_counter()
                step()
                first_ms = first_ms if first_ms is not None else (time.perf_counter() - start) * 1000
                for _ in range(warmup):
                    step()
                conn.send({})
            else:
                seconds: list[float] = []
                while not seconds or sum(seconds) < request[1]:
                    start = time.perf_counter()
                    step()
                    seconds.append(time.perf_counter() - start)
                conn.send({"seconds": seconds})
    except EOFError:  # the parent closed the pipe: it stopped early, or was interrupted
        return
    except BaseException as exc:  # the parent re-raises it
        with contextlib.suppress(OSError):  # unless it is gone
            conn.send(exc)


def _step(predictor: Any, shape: Shape) -> Callable[[], Any]:
    """One timed call: the model on a fixed synthetic batch, or the next real text (tokenized and
    run, as ``Predictor.outputs`` does for one text)."""
    session, output = predictor.session, [predictor.bundle.manifest.output_name]
    if shape[0] == "real":
        texts = itertools.cycle(shape[1])
        return lambda: session.run(output, predictor.encode([next(texts)])[0])
    batch, seq_len = shape
    feeds = synthetic_feeds(predictor.tokenizer, int(batch), int(seq_len))  # type: ignore[arg-type]
    feeds = {k: v for k, v in feeds.items() if k in predictor.input_names}
    return lambda: session.run(output, feeds)


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
