"""The aggregators' events: printed as `[flops] {json}` lines, which FLOps follows through the SuperLink's log
stream (Flower's Control API), and kept in an append-only events.jsonl on the aggregator's own host."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


EVENT_PREFIX = "[flops] "


def read_events(output_dir: Path, event: str) -> list[dict[str, Any]]:
    """The events of one kind in OUTPUT_DIR's events.jsonl (an EventLog's file), oldest first."""
    path = output_dir / "events.jsonl"
    if not path.exists():
        return []
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a process killed while writing it
        if isinstance(record, dict) and record.get("event") == event:
            found.append(record)
    return found


class EventLog:
    """One JSON object per line; with no directory (a plain `flwr run`) events are only printed."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> None:
        record = strict_json({"event": event, "time": time.time(), **fields})
        print(EVENT_PREFIX + json.dumps(record, allow_nan=False), flush=True)
        if self.output_dir is None:
            return
        with open(self.output_dir / "events.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, allow_nan=False) + "\n")
            fh.flush()

    def recorded(self, event: str) -> list[dict[str, Any]]:
        """This log's earlier events of one kind, from its file (a resumed aggregator's, before the restart)."""
        return read_events(self.output_dir, event) if self.output_dir is not None else []

    def resend(self, record: dict[str, Any]) -> None:
        """Print an earlier event again, marked so, for a follower that may have missed it (not kept twice)."""
        print(EVENT_PREFIX + json.dumps({**record, "resent": True}, allow_nan=False), flush=True)

    def _write_atomically(self, name: str, write) -> None:  # noqa: ANN001 - a writer taking a binary file
        if self.output_dir is None:
            return
        tmp = self.output_dir / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            write(fh)
        os.replace(tmp, self.output_dir / name)

    def save_arrays(self, arrays: list[np.ndarray], name: str = "final_model.npz") -> None:
        """Flower discards a run's final context, so the model leaves the ServerApp as a file."""
        self._write_atomically(name, lambda fh: np.savez(fh, *arrays))

    def publish_file(self, name: str, payload: bytes) -> None:
        """Send a file to whoever follows the log stream (the root's final model to FLOps, on another host), and
        keep it here too. One line: the log stream carries text, so the bytes go as base64."""
        self._write_atomically(name, lambda fh: fh.write(payload))
        print(EVENT_PREFIX + json.dumps({"event": "file", "name": name, "data": base64.b64encode(payload).decode()}),
              flush=True)

    def save_json(self, name: str, payload: dict[str, Any]) -> None:
        self._write_atomically(name, lambda fh: fh.write(json.dumps(payload).encode()))


def strict_json(value: Any) -> Any:
    """VALUE with every NaN or infinity replaced by None: the event log is strict JSON (null, not NaN)."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def npz_bytes(arrays: list[np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *arrays)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def load_arrays(path: str | Path) -> list[np.ndarray]:
    with np.load(path) as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]
