"""Append-only JSON-lines event log the aggregators write and FLOps reads to track a run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


class EventLog:
    """One JSON object per line; with no directory (a plain `flwr run`) events are only printed."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> None:
        record = strict_json({"event": event, "time": time.time(), **fields})
        print(f"[flops] {json.dumps(record, allow_nan=False)}", flush=True)
        if self.output_dir is None:
            return
        with open(self.output_dir / "events.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, allow_nan=False) + "\n")
            fh.flush()

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

    def save_example(self, example: np.ndarray) -> None:
        self._write_atomically("input_example.npy", lambda fh: np.save(fh, example))

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


def load_arrays(path: str | Path) -> list[np.ndarray]:
    with np.load(path) as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]
