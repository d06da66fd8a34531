"""The one timing path: a clock around each batch of a pass, and the memory a call adds.

:func:`pass_ms` is the clock. ``dyntok.bench`` reports its per-batch milliseconds (p50/p90 over repeats x
batches); :func:`best_pass_ms` turns it into milliseconds per example (the fastest of repeated passes), the
unit of ``dyntok.compare`` and the search's latency budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

Batch = dict[str, torch.Tensor]


def pass_ms(forward: Callable[[Any], Any], batches: Sequence[Any], device: torch.device | str = "cpu"
            ) -> list[float]:
    """Milliseconds of ``forward`` on each item of ``batches`` (batches, or anything ``forward`` takes), one
    pass in order, CUDA synchronised around each item, under ``torch.inference_mode()``."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    out = []
    with torch.inference_mode():
        for b in batches:
            sync()
            start = time.perf_counter()
            forward(b)
            sync()
            out.append(1000.0 * (time.perf_counter() - start))
    return out


def best_pass_ms(forward: Callable[[Batch], Any], batches: Sequence[Batch], repeats: int = 2,
                 device: torch.device | str = "cpu") -> float:
    """Milliseconds per example of ``forward`` over ``batches``: the fastest of ``repeats`` timed passes
    (:func:`race_ms` with one entrant). Used by the search's latency budget and :mod:`dyntok.compare`.

    Raises:
        ValueError: ``repeats`` < 1 or no example in ``batches``.
    """
    return race_ms({"forward": forward}, batches, repeats, device)["forward"]


def race_ms(forwards: dict[str, Callable[[Batch], Any]], batches: Sequence[Batch], repeats: int = 3,
            device: torch.device | str = "cpu") -> dict[str, float]:
    """Milliseconds per example of each forward over the same ``batches``: the fastest of ``repeats`` timed
    passes each, the forwards taking turns pass by pass, so a slow spell of a shared machine falls on all of
    them alike; the fastest pass (a warm one) is what other jobs can only slow down.

    Raises:
        ValueError: ``repeats`` < 1 or no example in ``batches``.
    """
    n = sum(int(b["input_ids"].size(0)) for b in batches)
    if repeats < 1 or n == 0:
        raise ValueError(f"timing needs repeats >= 1 and examples, got {repeats} and {n}")
    best = dict.fromkeys(forwards, float("inf"))
    for _ in range(repeats):
        for name, forward in forwards.items():
            best[name] = min(best[name], sum(pass_ms(forward, batches, device)))
    return {name: ms / n for name, ms in best.items()}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise OSError(f"/proc/self/status has no {field}")


def peak_memory_mb(fn: Callable[[], Any]) -> tuple[float, float]:
    """Resident memory around ``fn()`` in this process (Linux): the peak is reset just before the call.

    Returns:
        (rss_before, peak) in MB: resident set size when ``fn`` starts, and its high-water mark while it
        runs. ``peak - rss_before`` is what ``fn`` itself added (activations, buffers), without the model,
        data and framework already resident.

    Raises:
        OSError: no ``/proc/self/clear_refs`` to reset the peak (not Linux, or not permitted).
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
    before = _status_mb("VmRSS")
    fn()
    return before, _status_mb("VmHWM")




def cpu_has_bf16() -> bool | None:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX: ``avx512_bf16`` / ``amx_bf16`` in
    ``/proc/cpuinfo``); None where that cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), None)
    except OSError:
        return None
    return None if flags is None else bool({"avx512_bf16", "amx_bf16"} & set(flags))


def bf16_cost(forward: Callable[[Batch], Any], batch: Batch, device: torch.device | str = "cpu") -> dict[str, float]:
    """Milliseconds of ``forward`` on one ``batch`` in float32 and under bfloat16 autocast (the faster of two
    passes each, taking turns), and their ratio ``bf16_slowdown`` (> 1: bfloat16 is slower here, as on a CPU
    without AVX-512 BF16 or AMX)."""
    import contextlib

    dev = torch.device(device)
    modes = {"fp32": contextlib.nullcontext, "bf16": lambda: torch.autocast(dev.type, dtype=torch.bfloat16)}
    best = dict.fromkeys(modes, float("inf"))
    for _ in range(2):
        for name, ctx in modes.items():
            with ctx():
                best[name] = min(best[name], pass_ms(forward, [batch], dev)[0])
    return {"fp32_ms": best["fp32"], "bf16_ms": best["bf16"], "bf16_slowdown": best["bf16"] / best["fp32"]}
