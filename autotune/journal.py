"""OUT/journal.jsonl: one JSON line per finished trial, appended and fsync'd as it finishes.

The first line describes the run (model hash, loss definition, objective, search space); each later
line is a trial {"type": "trial", "key", "point", "config", "metrics", "searcher", ...}. A process
killed mid-write leaves at most one torn last line (no newline, or not valid JSON): reading skips
it, and opening for append cuts it off first, so the next record starts on a fresh line. A trial
is in the journal completely or not at all, so a resumed run neither loses nor repeats one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from qcc.errors import QccError

JOURNAL = "journal.jsonl"


def _default(o):
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def read(path: str | Path) -> tuple[dict | None, list[dict]]:
    """(run header, trials) of a journal; a torn or garbled last line is ignored."""
    path = Path(path)
    if not path.is_file():
        return None, []
    header, trials = None, []
    lines = path.read_bytes().split(b"\n")
    for n, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError:
            if n >= len(lines) - 2:   # the last record (maybe followed by an empty string)
                continue
            raise QccError(f"{path}: line {n + 1} is not JSON (the journal is corrupt)") from None
        if rec.get("type") == "run":
            header = rec
        elif rec.get("type") == "trial":
            trials.append(rec)
    return header, trials


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.header, self.trials = read(self.path)
        self._repair()

    def _repair(self) -> None:
        """Cut a torn last line off, so appends start on a fresh line."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
                f.flush()
                os.fsync(f.fileno())

    def start(self, header: dict) -> None:
        """Write the run header, or check that a resumed run is the same run."""
        if self.header is None:
            self._append({"type": "run", **header})
            self.header = {"type": "run", **header}
            return
        # loss_definitions: a journal of a qcc whose losses meant something else (before the metric
        # registry, "disagreement" was the confident-sample figure) must not be resumed under the same name
        for field in ("model_sha256", "loss", "loss_definitions", "data_sha256"):
            if field in header and self.header.get(field) != header[field]:
                raise QccError(f"{self.path} belongs to another tuning run ({field} differs); "
                               "use a new output folder")

    def append(self, record: dict) -> None:
        record = {"type": "trial", **record}
        self._append(record)
        self.trials.append(record)

    def _append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True, default=_default, allow_nan=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            data = line.encode()
            while data:                   # O_APPEND: every write lands at the end
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def done(self) -> dict[str, dict]:
        return {t["key"]: t for t in self.trials}
