"""A Grid that hands the strategy its replies as soon as they arrive, instead of Flower's 3 s pull sleep."""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

# HttpGrid.send_and_receive sleeps a fixed 3 s between pulls (flwr/superlink/grid/http_grid.py): with
# warm learners most replies arrive well within that. A pull is one loopback call to this SuperLink, so
# pulling every 50 ms while warm learners' replies are due (their first seconds), then backing off to 0.5 s,
# costs little while a slow round is still running.
FIRST_PULL_WAIT_S = 0.05
QUICK_PULLS_S = 2.0
LONGEST_PULL_WAIT_S = 0.5
NODE_WAIT_S = 0.1


class PromptGrid(Grid):
    """Delegates to Flower's Grid; only the waiting for replies (and for nodes) is its own."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def set_run(self, run) -> None:  # noqa: ANN001 - flwr's Run
        self._grid.set_run(run)

    @property
    def run(self):  # noqa: ANN201 - flwr's Run
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Flower's semantics (push, then pull until every reply is in or timeout passes) with shorter waits.

        An error reply does not end the wait: one learner's exception is not yet the run's end (the strategy
        decides with every reply of the round in hand)."""
        waiting = set(self._grid.push_messages(messages))
        started = time.monotonic()
        end = started + (timeout or 0.0)
        replies: list[Message] = []
        pause = FIRST_PULL_WAIT_S
        while timeout is None or time.monotonic() < end:
            got = list(self._grid.pull_messages(waiting))
            replies += got
            waiting -= {reply.metadata.reply_to_message_id for reply in got}
            if not waiting:
                break
            time.sleep(pause)
            if time.monotonic() - started >= QUICK_PULLS_S:
                pause = min(pause * 2, LONGEST_PULL_WAIT_S)
        return replies

    def wait_for_nodes(self, count: int, timeout_s: float) -> None:
        """Return once COUNT nodes are connected (Flower's own sampling waits in steps of 1 s)."""
        end = time.monotonic() + timeout_s
        while len(list(self._grid.get_node_ids())) < count and time.monotonic() < end:
            time.sleep(NODE_WAIT_S)
