"""The hand-over between a cluster aggregator and its one cluster run: which asked round the run takes next."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

HANDOVER = Path(__file__).resolve().parents[2] / "templates" / "flower_app" / "flops_app" / "handover.py"
spec = importlib.util.spec_from_file_location("flops_handover", HANDOVER)
handover = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = handover  # dataclasses look their module up there
spec.loader.exec_module(handover)


def test_a_cluster_run_takes_only_rounds_asked_of_it_lowest_first_and_a_round_asked_again(tmp_path: Path) -> None:
    handover.post_request(tmp_path, 2, cluster_run=7, last=False)
    handover.post_request(tmp_path, 1, cluster_run=99, last=False)  # asked of an earlier cluster run: not ours
    first = handover.next_request(tmp_path, 7, set(), idle_s=1)
    assert (first.global_round, first.folder, first.last) == (2, tmp_path / "round-2", False)
    handover.post_request(tmp_path, 3, cluster_run=7, last=True)
    second = handover.next_request(tmp_path, 7, {first.ask}, idle_s=1)
    assert (second.global_round, second.last) == (3, True)
    assert handover.next_request(tmp_path, 7, {first.ask, second.ask}, idle_s=0.2) is None  # idle: nothing left
    # A restarted aggregator asks round 3 again: its stale result goes, and the run computes it again.
    (tmp_path / "round-3" / handover.RESULT).write_text("{}")
    handover.post_request(tmp_path, 3, cluster_run=7, last=True)
    assert not (tmp_path / "round-3" / handover.RESULT).exists()
    again = handover.next_request(tmp_path, 7, {first.ask, second.ask}, idle_s=1)
    assert again.global_round == 3 and again.ask != second.ask


def test_the_aggregator_remembers_its_cluster_run_across_its_own_restart(tmp_path: Path) -> None:
    assert handover.remembered_run(tmp_path) is None
    handover.remember_run(tmp_path, 12345678901234567)
    assert handover.remembered_run(tmp_path) == 12345678901234567
    assert json.loads((tmp_path / handover.CLUSTER_RUN).read_text()) == {"run_id": 12345678901234567}
