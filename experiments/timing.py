"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax


def time_call(fn: Callable, *args, repeats: int = 5, warmup: int = 1) -> dict:
    """Median wall time of ``fn(*args)`` (results blocked on) after ``warmup`` calls.

    Returns ``{"median_s", "min_s", "times_s", "compile_s"}``; ``compile_s`` is the time
    of the first call (tracing, compilation and one run).
    """
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times,
            "compile_s": compile_s}
