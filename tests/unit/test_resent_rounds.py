"""A resumed root sends the rounds of its checkpoint again; the controller keeps those it had missed, once."""

from __future__ import annotations

from pathlib import Path

import pytest
from flops_templates.flower_app.flops_app.events import EventLog

from flops.run_events import RootEvents


def test_a_resumed_root_resends_its_rounds_and_the_controller_keeps_only_those_it_missed(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root_log = EventLog(str(tmp_path / "root-host"))
    for server_round in (1, 2, 3):
        root_log.emit("round", round=server_round, rounds=4, central={"accuracy": 0.5 + server_round / 10})
    root_log.emit("failed", message="not a round")
    with open(tmp_path / "root-host" / "events.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"event": "round", "rou')  # the line a killed root was writing
    capsys.readouterr()

    for earlier in root_log.recorded("round"):
        root_log.resend(earlier)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and all('"resent": true' in line for line in printed)

    controller = RootEvents(tmp_path / "output")
    # The controller had recorded rounds 1 and 2 before the SuperLink died; round 3's event was lost with it.
    assert [e["round"] for e in controller.read(printed, rounds_recorded=2)] == [3]
    assert len((tmp_path / "output" / "events.jsonl").read_text().splitlines()) == 1  # no round kept twice
