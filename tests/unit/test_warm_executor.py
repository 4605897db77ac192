"""The warm learner's launcher arguments and the ServerApp's prompt reply polling (no processes started)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

from types import SimpleNamespace

import pytest

FLOPS_APP = Path(__file__).resolve().parents[2] / "templates" / "flower_app" / "flops_app"


def _load(name: str):  # noqa: ANN202 - a module
    spec = importlib.util.spec_from_file_location(f"flops_app_{name}", FLOPS_APP / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


warm_executor = _load("warm_executor")


def test_runtime_api_address_follows_the_supernodes_own_host_and_port() -> None:
    assert warm_executor._runtime_api_address(["flower-supernode", "--insecure"]) == "127.0.0.1:9094"
    argv = ["flower-supernode", "--host", "0.0.0.0", "--port", "20123", "--node-config", "partition-id=0"]
    assert warm_executor._runtime_api_address(argv) == "0.0.0.0:20123"


def test_the_supernode_is_started_with_process_isolation_unless_told_otherwise() -> None:
    launcher = warm_executor.Launcher(["flower-supernode", "--insecure"], poll_interval=0.05)
    assert launcher.supernode_argv[-2:] == ["--isolation", "process"]
    explicit = warm_executor.Launcher(["flower-supernode", "--isolation", "process"], poll_interval=0.05)
    assert explicit.supernode_argv.count("--isolation") == 1


def test_a_failure_names_the_learner_or_the_cluster() -> None:
    assert warm_executor._who({"partition-id": 3, "num-partitions": 4}) == "learner 3"
    assert warm_executor._who({"cluster-name": "edge-a", "cluster-index": 0}) == "cluster edge-a"


def test_the_launcher_needs_the_supernode_command() -> None:
    with pytest.raises(SystemExit):
        warm_executor.main(["--"])


# --- PromptGrid: Flower's send_and_receive semantics without the 3 s sleep ---

class ReplyingGrid:
    """A Grid stand-in whose replies become available after a given number of pulls."""

    def __init__(self, replies_after_pulls: dict[str, tuple[int, SimpleNamespace]]) -> None:
        self.replies_after_pulls = replies_after_pulls
        self.pulls = 0

    def push_messages(self, messages):  # noqa: ANN001, ANN201
        return list(messages)

    def pull_messages(self, message_ids):  # noqa: ANN001, ANN201
        self.pulls += 1
        return [reply for mid, (after, reply) in self.replies_after_pulls.items()
                if mid in message_ids and self.pulls >= after]


def _reply(to: str, error: bool = False) -> SimpleNamespace:
    """What PromptGrid reads from a reply Message: what it answers and whether it is an error."""
    return SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=to), has_error=lambda: error)


@pytest.fixture(name="prompt_grid")
def prompt_grid_module():  # noqa: ANN201
    sys.path.insert(0, str(FLOPS_APP.parent))
    try:
        yield _load("prompt_grid")
    finally:
        sys.path.remove(str(FLOPS_APP.parent))


def test_replies_are_returned_as_soon_as_all_are_in(prompt_grid) -> None:  # noqa: ANN001
    inner = ReplyingGrid({"a": (1, _reply("a")), "b": (3, _reply("b"))})
    started = time.monotonic()
    replies = prompt_grid.PromptGrid(inner).send_and_receive(["a", "b"], timeout=60)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert inner.pulls == 3
    assert time.monotonic() - started < 3.0  # Flower's HttpGrid would have slept 3 s twice


def test_an_error_reply_does_not_end_the_wait_for_the_others(prompt_grid) -> None:  # noqa: ANN001
    # One learner's exception is not yet the run's end: the strategy decides with the whole round's replies.
    inner = ReplyingGrid({"a": (2, _reply("a", error=True)), "b": (4, _reply("b"))})
    replies = prompt_grid.PromptGrid(inner).send_and_receive(["a", "b"], timeout=60)
    assert sorted((r.metadata.reply_to_message_id, r.has_error()) for r in replies) == [("a", True), ("b", False)]
    assert inner.pulls == 4


def test_a_timeout_returns_what_arrived(prompt_grid) -> None:  # noqa: ANN001
    inner = ReplyingGrid({"a": (1, _reply("a")), "b": (10_000, _reply("b"))})
    replies = prompt_grid.PromptGrid(inner).send_and_receive(["a", "b"], timeout=0.3)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]


def test_the_image_runs_learners_and_cluster_aggregators_warm() -> None:
    from flops.app_image import APP_WORKDIR, ENTRYPOINT_PATH, runtime_files

    script = runtime_files()[ENTRYPOINT_PATH]
    warm = f"exec python3 {APP_WORKDIR}/flops_app/warm_executor.py -- flower-supernode \"$@\""
    for role in ("learner)", "cluster-aggregator)"):
        branch = script.split(f"  {role}", 1)[1].split(";;", 1)[0]
        assert warm in branch, branch
