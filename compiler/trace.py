"""What one compile did, for report.json / report.html and the log: seconds per stage, and each graph
pass applied with the figures it measured (its summary), in the order they ran."""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from typing import Any, Callable


def _plain(value: Any) -> Any:
    """JSON-safe copy of a pass summary: numbers, strings, lists and dicts of them (numpy scalars too)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if hasattr(value, "item"):           # numpy scalar
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return value
    return str(value)


class Trace:
    """timings: {stage_s: seconds}; passes: [{name, seconds, summary}]; log: the progress line sink."""

    def __init__(self, log: Callable[[str], None] | None = None):
        self.timings: dict[str, float] = {}
        self.passes: list[dict] = []
        self.log = log or (lambda msg: None)

    @contextmanager
    def timed(self, key: str | None):
        """Record the seconds the block takes as timings[key] (key None: not recorded)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            if key is not None:
                self.timings[key] = time.perf_counter() - t

    def pass_done(self, name: str, started: float, summary: dict, line: str) -> None:
        """Record pass `name` (begun at perf_counter() == started) with its summary, and log `line`."""
        seconds = time.perf_counter() - started
        self.timings[f"{name.replace('-', '_')}_s"] = seconds
        # the headline figures; per-site lists and tables stay out of the report
        figures = {k: v for k, v in (summary or {}).items() if not isinstance(v, (dict, list, tuple))}
        self.passes.append({"name": name, "seconds": round(seconds, 4), "summary": _plain(figures)})
        self.log(line)
