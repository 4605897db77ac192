"""The global model, the strategy's own state and the round number after each global round, in one file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHECKPOINT_FILE = "checkpoint.npz"


@dataclass
class Checkpoint:
    round: int
    arrays: list[np.ndarray]
    strategy_state: dict[str, np.ndarray]


def save_checkpoint(output_dir: Path | None, server_round: int, arrays: list[np.ndarray],
                    strategy_state: dict[str, np.ndarray]) -> None:
    """One file, replaced atomically: a crash leaves the previous round's checkpoint, never half of one."""
    if output_dir is None:
        return
    payload = {f"model/{i}": a for i, a in enumerate(arrays)}
    payload.update({f"state/{k}": v for k, v in strategy_state.items()})
    payload["round"] = np.asarray(server_round, dtype=np.int64)
    tmp = output_dir / f".{CHECKPOINT_FILE}.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, **payload)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, output_dir / CHECKPOINT_FILE)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """PATH: the checkpoint file, or the output directory holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    with np.load(path) as npz:
        count = sum(1 for k in npz.files if k.startswith("model/"))
        return Checkpoint(
            round=int(npz["round"]),
            arrays=[npz[f"model/{i}"] for i in range(count)],
            strategy_state={k[len("state/"):]: npz[k] for k in npz.files if k.startswith("state/")},
        )
