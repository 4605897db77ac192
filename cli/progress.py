"""Live progress of a run or an image build: rich on a TTY, plain lines otherwise."""

from __future__ import annotations

import sys

import click
from rich.console import Console

from flops.runstate import RunState
from image_builder import ProgressEvent


def _round_line(state: RunState) -> str:
    m = state.latest_metrics
    parts = [f"round {state.rounds_completed}/{state.rounds}"]
    if m.get("central_accuracy") is not None:
        parts.append(f"accuracy {m['central_accuracy']:.4f}")
    if m.get("central_loss") is not None:
        parts.append(f"loss {m['central_loss']:.4f}")
    if m.get("round_duration_s") is not None:
        parts.append(f"{m['round_duration_s']:.1f}s")
    if state.last_round_missing:
        parts.append(f"missing: {', '.join(state.last_round_missing)}")
    if state.last_round_rejected:
        parts.append("rejected: " + ", ".join(f"{k} ({v})" for k, v in state.last_round_rejected.items()))
    return "  ".join(parts)


class PlainProgress:
    """One line per phase change and per round, to stderr (stdout stays for results and --json)."""

    def __init__(self) -> None:
        self._last_phase = ""

    def phase(self, state: RunState) -> None:
        if state.phase != self._last_phase:
            self._last_phase = state.phase
            print(f"[{state.run_id}] {state.phase}", file=sys.stderr, flush=True)

    def round(self, state: RunState) -> None:
        print(f"[{state.run_id}] {_round_line(state)}", file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)


class RichProgress:
    """A spinner with phase and latest round on a terminal; rounds stay in the scrollback."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self._status = self.console.status("starting")
        self._status.start()

    def phase(self, state: RunState) -> None:
        if state.status in ("FINISHED", "FAILED", "STOPPED"):
            self._status.stop()
            return
        self._status.update(f"[bold]{state.run_id}[/] {state.phase}")

    def round(self, state: RunState) -> None:
        self.console.print(f"[cyan]{_round_line(state)}[/]")
        self._status.update(f"[bold]{state.run_id}[/] training  {_round_line(state)}")

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {message}", markup=True, highlight=False)

    def note(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)

    def close(self) -> None:
        self._status.stop()


def make_progress(quiet: bool = False) -> PlainProgress | RichProgress:
    return RichProgress() if sys.stderr.isatty() and not quiet else PlainProgress()


class ProgressPrinter:
    """Steps per platform: coloured with rich on a terminal, plain lines otherwise; tool output in the log only."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.console = Console(stderr=True) if self.tty else None

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "line":
            return
        where = event.platform or "all"
        step = f"{event.step} done" if event.kind == "done" else event.step
        text = f"[{where}] {step}" + (f": {event.message}" if event.message else "")
        if self.console is None:
            click.echo(("warning: " if event.kind == "warning" else "") + text, err=True)
            return
        style = {"step": "cyan", "done": "green", "warning": "bold yellow"}[event.kind]
        mark = {"step": "…", "done": "✓", "warning": "!"}[event.kind]
        self.console.print(f"[{style}]{mark}[/] [dim]{where:<12}[/] {event.step}"
                           + (f" [dim]{event.message}[/]" if event.message else ""), highlight=False)
