"""``edgebert soak``: many threads predicting at once for a while, checked against single-threaded
answers, with the process's memory watched. No torch."""

from __future__ import annotations

import itertools
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgebert.runtime import Predictor
from edgebert.samples import SENTENCES


@dataclass(frozen=True)
class SoakConfig:
    """``threads`` callers for ``seconds``, sharing one Predictor (``shared``) or one each."""

    threads: int = 8
    seconds: float = 30.0
    shared: bool = True
    precision: str | None = None
    seed: int = 0


def soak_texts() -> list[str]:
    """Mixed lengths: the built-in sentences alone, in pairs, and runs of several (some truncated)."""
    texts = list(SENTENCES)
    texts += [f"{a} {b}" for a, b in itertools.pairwise(SENTENCES)]
    texts += [" ".join(SENTENCES[i : i + n]) for i, n in ((0, 5), (3, 12), (7, 32))]
    return texts


def soak(bundle: str | Path, config: SoakConfig = SoakConfig()) -> dict[str, Any]:
    """Run the soak; return request, error and mismatch counts and the RSS at start and end."""
    import psutil

    texts = soak_texts()
    first = Predictor(bundle, precision=config.precision, threads=1)
    expected = {t: first.predict([t])[0] for t in texts}
    predictors = (
        [first] * config.threads
        if config.shared
        else [Predictor(first.bundle, precision=first.precision, threads=1) for _ in range(config.threads)]
    )
    process = psutil.Process()
    rss_start = process.memory_info().rss / 2**20
    counts = {"requests": 0, "errors": 0, "mismatches": 0}
    first_error: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + config.seconds
    stop = threading.Event()  # set on Ctrl-C (or any error here): the callers end their call and stop

    def caller(index: int) -> None:
        rng = random.Random(config.seed + index)
        done = errors = mismatches = 0
        while time.monotonic() < deadline and not stop.is_set():
            text = rng.choice(texts)
            try:
                result = predictors[index].predict([text])[0]
                mismatches += _differs(result, expected[text])
            except Exception as exc:  # counted, not raised: the soak reports every failure
                errors += 1
                first_error.append(f"{type(exc).__name__}: {exc}")
            done += 1
        with lock:
            counts["requests"] += done
            counts["errors"] += errors
            counts["mismatches"] += mismatches

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(config.threads)]
    rss_peak = rss_warm = rss_start
    warm_at = time.monotonic() + config.seconds / 5  # threads' first calls allocate their buffers
    try:
        for worker in workers:
            worker.start()
        while any(w.is_alive() for w in workers):
            rss = process.memory_info().rss / 2**20
            rss_peak = max(rss_peak, rss)
            rss_warm = rss if time.monotonic() < warm_at else rss_warm
            time.sleep(0.2)
    finally:
        stop.set()
        for worker in workers:
            if worker.is_alive():
                worker.join()
    rss_end = process.memory_info().rss / 2**20
    rss_peak = max(rss_peak, rss_end)  # sampled while it ran: the end is a sample too
    return {
        **counts,
        "threads": config.threads,
        "shared_predictor": config.shared,
        "seconds": config.seconds,
        "precision": first.precision,
        "distinct_texts": len(texts),
        "rss_start_mb": rss_start,
        "rss_peak_mb": rss_peak,
        "rss_end_mb": rss_end,
        "rss_growth_mb": rss_end - rss_start,
        "rss_after_first_fifth_mb": rss_warm,
        "rss_growth_after_first_fifth_mb": rss_end - rss_warm,
        "first_error": first_error[0] if first_error else None,
    }


def _differs(result: Any, expected: Any) -> bool:
    if result.embedding is not None:
        return bool(abs(result.embedding - expected.embedding).max() > 1e-6)
    return result.label != expected.label or abs((result.score or 0) - (expected.score or 0)) > 1e-6
