"""Append-only JSON-lines event log the root aggregator writes and FLOps reads to track a run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


class EventLog:
    """One JSON object per line; with no directory (a plain `flwr run`) events are only logged."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)

    def emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": time.time(), **fields}
        print(f"[flops] {json.dumps(record)}", flush=True)
        if self.output_dir is None:
            return
        with open(self.output_dir / "events.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()

    def save_model(self, arrays: list[np.ndarray], example: np.ndarray) -> None:
        """Write the final weights and an input example atomically (Flower discards a run's final context)."""
        if self.output_dir is None:
            return
        for name, writer in (
            ("final_model.npz", lambda fh: np.savez(fh, *arrays)),
            ("input_example.npy", lambda fh: np.save(fh, example)),
        ):
            tmp = self.output_dir / f".{name}.tmp"
            with open(tmp, "wb") as fh:
                writer(fh)
            os.replace(tmp, self.output_dir / name)
