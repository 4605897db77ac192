"""The warm learner's launcher arguments and the ServerApp's prompt reply polling (no processes started)."""

from __future__ import annotations

import importlib.util
import sys
import threading
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


prompt_supernode = _load("prompt_supernode")
sys.modules["prompt_supernode"] = prompt_supernode  # warm_executor imports it as the script beside it
warm_executor = _load("warm_executor")


def test_runtime_api_address_follows_the_supernodes_own_host_and_port() -> None:
    assert warm_executor._runtime_api_address(["flower-supernode", "--insecure"]) == "127.0.0.1:9094"
    argv = ["flower-supernode", "--host", "0.0.0.0", "--port", "20123", "--node-config", "partition-id=0"]
    assert warm_executor._runtime_api_address(argv) == "0.0.0.0:20123"


def test_the_supernode_is_started_with_process_isolation_unless_told_otherwise() -> None:
    launcher = warm_executor.Launcher(["/venv/bin/flower-supernode", "--insecure"], poll_interval=0.05)
    assert launcher.supernode_args == ["--insecure", "--isolation", "process"]
    explicit = warm_executor.Launcher(["flower-supernode", "--isolation", "process"], poll_interval=0.05)
    assert explicit.supernode_args.count("--isolation") == 1


def test_a_failure_names_the_learner_or_the_cluster() -> None:
    assert warm_executor._who({"partition-id": 3, "num-partitions": 4}) == "learner 3"
    assert warm_executor._who({"cluster-name": "edge-a", "cluster-index": 0}) == "cluster edge-a"


def test_the_launcher_needs_the_supernode_command(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        warm_executor.main(["--"])
    with pytest.raises(SystemExit):  # it runs Flower's SuperNode in its own process: no other command
        warm_executor.main(["--", "/opt/my-supernode", "--insecure"])
    assert "must be flower-supernode, not '/opt/my-supernode'" in capsys.readouterr().err


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


def test_replies_are_pulled_often_while_they_are_due_then_less(prompt_grid, monkeypatch) -> None:  # noqa: ANN001
    fake = FakeTime()
    monkeypatch.setattr(prompt_grid.time, "sleep", fake.sleep)
    monkeypatch.setattr(prompt_grid.time, "monotonic", fake.monotonic)
    inner = ReplyingGrid({"a": (60, _reply("a"))})
    prompt_grid.PromptGrid(inner).send_and_receive(["a"], timeout=600)
    quick = round(prompt_grid.QUICK_PULLS_S / prompt_grid.FIRST_PULL_WAIT_S)
    assert fake.slept[:quick] == [prompt_grid.FIRST_PULL_WAIT_S] * quick
    assert fake.slept[-1] == prompt_grid.LONGEST_PULL_WAIT_S and inner.pulls == 60


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


# --- prompt_supernode: Flower's SuperNode loop with short idle sleeps ---


def test_flowers_installed_supernode_loop_is_the_one_the_prompt_script_replaces_sleeps_in(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails when a Flower upgrade moves the loop's sleeps or its pull function: the 3 s poll would be back."""
    import inspect

    from flwr.supernode import start_client_internal as loop

    source = inspect.getsource(loop)
    assert f"time.sleep({prompt_supernode.FLOWER_IDLE_SLEEP_S})" in source
    assert f"time.sleep({prompt_supernode.FLOWER_LOCAL_WAIT_S})" in source
    monkeypatch.setattr(loop, "time", loop.time)  # restored after the test
    monkeypatch.setattr(loop, "_pull_and_store_message", loop._pull_and_store_message)
    clock = prompt_supernode.install(loop)
    assert isinstance(clock, prompt_supernode.PromptClock)
    assert loop.time is clock and loop.time.monotonic is time.monotonic


def test_an_unknown_loop_is_left_as_it_is() -> None:
    unknown = SimpleNamespace(time=SimpleNamespace(sleep=time.sleep), _pull_and_store_message=lambda: None)
    assert prompt_supernode.install(unknown) is None
    assert prompt_supernode.install(SimpleNamespace(time=time)) is None


class FakeTime:
    """time.sleep and time.monotonic of a clock that only sleeping moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


def test_the_idle_poll_stays_short_while_a_message_is_due_then_backs_off_and_restarts_after_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTime()
    monkeypatch.setattr(prompt_supernode.time, "sleep", fake.sleep)
    monkeypatch.setattr(prompt_supernode.time, "monotonic", fake.monotonic)
    pulls = iter([None] * 40 + [7, None, None])
    loop = SimpleNamespace(time=time, _pull_and_store_message=lambda **_: next(pulls))
    clock = prompt_supernode.install(loop)
    for _ in range(43):
        if loop._pull_and_store_message(state=None) is None:
            loop.time.sleep(3)
    loop.time.sleep(0.5)  # the loop's wait for a reply in its own state
    loop.time.sleep(7)  # any other sleep is kept
    idle = fake.slept[:40]
    quick = round(prompt_supernode.QUICK_IDLE_S / prompt_supernode.FIRST_IDLE_POLL_S)
    assert idle[:quick] == [prompt_supernode.FIRST_IDLE_POLL_S] * quick  # the next message is due: poll short
    assert all(b >= a for a, b in zip(idle, idle[1:])) and idle[-1] == prompt_supernode.MAX_IDLE_POLL_S
    assert fake.slept[40:42] == [prompt_supernode.FIRST_IDLE_POLL_S] * 2  # after the message: short again
    assert fake.slept[42:] == [prompt_supernode.LOCAL_WAIT_TICK_S, 7]
    assert clock.idle_poll_s == prompt_supernode.FIRST_IDLE_POLL_S


def test_the_worker_pulls_its_message_with_a_short_retry_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's own pull function, with the keyword arguments it documents; fails if an upgrade drops them."""
    import inspect

    from flwr.supernode.runtime import run_clientapp

    flowers = run_clientapp.pull_and_inflate_object_from_tree
    monkeypatch.setattr(run_clientapp, "pull_and_inflate_object_from_tree", flowers)  # restored after the test
    assert set(warm_executor.MESSAGE_PULL_BACKOFF_S) <= set(inspect.signature(flowers).parameters)
    warm_executor._prompt_message_pulls()
    prompt = run_clientapp.pull_and_inflate_object_from_tree
    assert prompt.func is flowers and prompt.keywords == warm_executor.MESSAGE_PULL_BACKOFF_S


def test_the_supernode_tells_the_launcher_when_a_message_is_stored() -> None:
    stored: list[int] = []
    pulls = iter([None, 11, None, 12])
    loop = SimpleNamespace(time=time, _pull_and_store_message=lambda **_: next(pulls))
    prompt_supernode.install(loop, on_message=lambda: stored.append(1))
    for _ in range(4):
        loop._pull_and_store_message(state=None)
    assert len(stored) == 2  # once per stored message, not per pull


def test_the_launcher_waits_for_the_supernodes_word_and_not_longer() -> None:
    launcher = warm_executor.Launcher(["flower-supernode"], poll_interval=0.05)
    launcher.told = True
    threading.Timer(0.05, launcher.message_stored.set).start()
    started = time.monotonic()
    launcher._wait_for_a_message()  # returns on the word, not after TOLD_POLL_S
    waited = time.monotonic() - started
    assert 0.04 <= waited < warm_executor.TOLD_POLL_S and not launcher.message_stored.is_set()
    started = time.monotonic()
    launcher._wait_for_a_message()  # nobody says anything: the safety-net look after TOLD_POLL_S
    assert time.monotonic() - started >= warm_executor.TOLD_POLL_S
    launcher.told = False  # Flower's loop as shipped never says: poll at the launcher's interval
    started = time.monotonic()
    launcher._wait_for_a_message()
    assert time.monotonic() - started < warm_executor.TOLD_POLL_S
