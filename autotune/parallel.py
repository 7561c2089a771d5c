"""Where trials run: in this process, in N local worker processes, or on a Ray cluster.

Each worker builds its own TrialEvaluator once (from an EvaluatorSpec: model path, data, target,
loss) and keeps its caches (canonical graph, calibration statistics, FP32 outputs) for every trial it
runs. `run(jobs)` yields (tag, metrics) as trials finish, in completion order, so the driver can
journal each at once. A config that fails to compile is a result too: {"error": "..."}.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from qcc import extras
from qcc.config import QuantConfig
from qcc.errors import QccError


@dataclass
class EvaluatorSpec:
    model: str
    calib: dict[str, np.ndarray]
    eval_data: dict[str, np.ndarray] | None = None
    labels: np.ndarray | None = None
    target: str = "onnx"
    loss: str = "auto"
    latency: bool = False
    mcpu: str | None = None

    def build(self):
        from .evaluate import TrialEvaluator

        return TrialEvaluator(self.model, self.calib, self.eval_data, self.labels, target=self.target,
                              loss=self.loss, latency=self.latency, mcpu=self.mcpu)


def run_trial(evaluator, config: dict) -> dict[str, Any]:
    try:
        return evaluator(QuantConfig(**config))
    except Exception as exc:  # a config the compiler rejects is a (bad) result, not the end of the search
        msg = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        return {"error": f"{type(exc).__name__}: {msg}", "traceback": traceback.format_exc(limit=4)[-2000:]}


class LocalExecutor:
    workers = 1

    def __init__(self, spec: EvaluatorSpec, evaluator=None):
        self.evaluator = evaluator or spec.build()

    def run(self, jobs: Iterable[tuple[Any, dict]]) -> Iterator[tuple[Any, dict]]:
        for tag, config in jobs:
            yield tag, run_trial(self.evaluator, config)

    def close(self) -> None:
        pass


_WORKER = None


def _init_worker(spec: EvaluatorSpec) -> None:
    global _WORKER
    _WORKER = spec.build()


def _work(config: dict) -> dict:
    return run_trial(_WORKER, config)


class ProcessExecutor:
    """N spawned local processes (spawn, not fork: onnxruntime's thread pools don't survive fork)."""

    def __init__(self, spec: EvaluatorSpec, workers: int):
        self.workers = workers
        self.pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                           initializer=_init_worker, initargs=(spec,))

    def run(self, jobs):
        futures = {self.pool.submit(_work, config): tag for tag, config in jobs}
        for fut in cf.as_completed(futures):
            yield futures[fut], fut.result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """The same trials on a Ray cluster: one actor per worker, each holding its evaluator.
    `address` is a cluster address (ray://host:10001, host:6379, "auto") or "local" for a fresh local
    instance."""

    def __init__(self, spec: EvaluatorSpec, address: str, workers: int):
        ray = extras.require("ray", "--ray")
        self.ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            kwargs = {"include_dashboard": False, "log_to_driver": False}
            if address == "local":
                ray.init(num_cpus=max(workers, 1), **kwargs)
            else:
                ray.init(address=address, **kwargs)
        actor = ray.remote(num_cpus=1)(_RayWorker)
        spec_ref = ray.put(spec)
        self.actors = [actor.remote(spec_ref) for _ in range(max(workers, 1))]
        self.workers = len(self.actors)

    def run(self, jobs):
        jobs = list(jobs)
        pending: dict = {}
        free = list(self.actors)
        while jobs or pending:
            while jobs and free:
                tag, config = jobs.pop(0)
                actor = free.pop()
                pending[actor.trial.remote(config)] = (tag, actor)
            done, _ = self.ray.wait(list(pending), num_returns=1)
            tag, actor = pending.pop(done[0])
            free.append(actor)
            yield tag, self.ray.get(done[0])

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        if self._owns:
            self.ray.shutdown()


class _RayWorker:
    def __init__(self, spec: EvaluatorSpec):
        self.evaluator = spec.build()

    def trial(self, config: dict) -> dict:
        return run_trial(self.evaluator, config)


def make_executor(spec: EvaluatorSpec, workers: int = 1, ray_address: str | None = None, evaluator=None):
    if workers < 1:
        raise QccError("--workers must be >= 1")
    if ray_address:
        return RayExecutor(spec, ray_address, workers)
    if workers == 1:
        return LocalExecutor(spec, evaluator)
    return ProcessExecutor(spec, workers)
