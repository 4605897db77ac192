"""Run logs as a reader wants them in MLflow: no terminal colour codes, Flower's polling lines counted, not listed."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# Lines a component writes every poll (FLOps asks the SuperLink for the run's status twice a second, SuperNodes
# pull for messages every few seconds): they carry no news, and were nearly half of a superlink.log.
POLLING_LINES = {
    "status polls (ListRuns)": re.compile(r"ControlServicer\.ListRuns|/v1/control/list-runs"),
    "message pulls (PullMessages)": re.compile(r"Fleet\.PullMessages|/v1/fleet/pull-messages"),
    "heartbeats": re.compile(r"SendNodeHeartbeat|/v1/fleet/send-node-heartbeat|Heartbeat", re.IGNORECASE),
    # The root sends its final model to FLOps as base64 in its log: kept in output/, not in the log's reading copy.
    "files sent to FLOps": re.compile(r'\[flops\] \{"event": "file"'),
}
_BLANK_LOG_LINE = re.compile(r"^\s*(INFO|DEBUG)\s*:\s*$")


def clean_log(text: str) -> str:
    """The log without ANSI codes, polling lines and empty log records; one closing line counts what was dropped."""
    kept: list[str] = []
    dropped: Counter[str] = Counter()
    for line in ANSI_ESCAPE.sub("", text).splitlines():
        kind = next((name for name, pattern in POLLING_LINES.items() if pattern.search(line)), None)
        if kind is not None:
            dropped[kind] += 1
        elif not _BLANK_LOG_LINE.match(line):
            kept.append(line.rstrip())
    if dropped:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(dropped.items()))
        kept.append(f"[flops] left out {sum(dropped.values())} polling lines: {counts}")
    return "\n".join(kept) + "\n"


def write_clean_logs(logs_dir: Path, dest: Path) -> Path:
    """Clean copies of every *.log in logs_dir under dest (the originals stay as written)."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(logs_dir.glob("*.log")):
        (dest / path.name).write_text(clean_log(path.read_text(errors="replace")))
    for path in sorted(logs_dir.glob("*.lock")):  # the run environment's resolved packages, as they are
        (dest / path.name).write_text(path.read_text())
    return dest
