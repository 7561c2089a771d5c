"""Steady-state latency of several engines on the same inputs, measured fairly.

Each engine runs in its own process, as it would deployed, so one engine's idle worker threads
(onnxruntime and TVM both spin-wait after a parallel region) never share a process with another's.
The engines take turns in rounds: in each round every engine warms up, then makes `runs / rounds`
back-to-back timed calls with no pauses (a pause changes clocks and caches, which favours whichever
engine it suits); the warm-up also lets the previous engine's spinning threads go to sleep. Rotating
the rounds spreads the machine's load over all engines alike. Reported: median and p90 per engine.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass

import numpy as np

from .errors import QccError


@dataclass(frozen=True)
class Engine:
    """kind: "qcc" (an artifact folder, run by qcc.load) or "onnxruntime" (an .onnx file)."""
    kind: str
    path: str
    threads: int


def _make_call(engine: Engine, feeds: dict):
    if engine.kind == "qcc":
        from .artifact import load

        art = load(engine.path, threads=engine.threads)
        return lambda: art.run(feeds)
    if engine.kind == "onnxruntime":
        from .backends import onnxruntime as ort_backend

        sess = ort_backend.make_session(engine.path, threads=engine.threads, fuse_qdq=True)   # as users run it
        return lambda: sess.run(None, feeds)
    raise ValueError(f"unknown engine kind {engine.kind!r}")


def _worker(conn, engine: Engine, feeds: dict) -> None:
    try:
        call = _make_call(engine, feeds)
        call()   # the first call compiles / allocates: fail here, not mid-measurement
    except Exception as exc:   # reported to the parent as a one-line error
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        n, warmup = msg
        for _ in range(warmup):
            call()
        times = np.empty(n)
        for i in range(n):
            t = time.perf_counter()
            call()
            times[i] = time.perf_counter() - t
        conn.send(("times", times))


def measure(engines: dict[str, Engine], feeds: dict[str, np.ndarray], runs: int = 300, warmup: int = 50,
            rounds: int = 3, progress=None) -> dict[str, dict]:
    """{name: {"median_ms", "p90_ms", "runs"}} for each engine; `progress(done, total)` after each block."""
    if runs < rounds or warmup < 0:
        raise QccError(f"need at least {rounds} runs (got {runs}) and a non-negative warm-up")
    ctx = mp.get_context("spawn")   # a fresh interpreter: no thread pool inherited from this one
    procs, conns = {}, {}
    try:
        for name, engine in engines.items():
            parent, child = ctx.Pipe()
            procs[name] = ctx.Process(target=_worker, args=(child, engine, feeds), daemon=True)
            procs[name].start()
            conns[name] = parent
        for name, conn in conns.items():
            status, detail = conn.recv()
            if status != "ready":
                raise QccError(f"{name} could not run: {detail}")
        times: dict[str, list[np.ndarray]] = {k: [] for k in engines}
        per = runs // rounds
        total, done = rounds * len(engines), 0
        for _ in range(rounds):
            for name, conn in conns.items():
                conn.send((per, warmup))
                status, got = conn.recv()
                times[name].append(got)
                done += 1
                if progress:
                    progress(done, total)
    except EOFError:
        raise QccError("a benchmark worker process died (out of memory, or a crash in the engine)") from None
    finally:
        for conn in conns.values():
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for p in procs.values():
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    out = {}
    for name, parts in times.items():
        t = np.concatenate(parts) * 1e3
        out[name] = {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)), "runs": int(t.size)}
    return out
