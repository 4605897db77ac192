"""flower-supernode that notices a waiting message promptly instead of after Flower's fixed 3 s idle sleep.

Flower's SuperNode loop (flwr/supernode/start_client_internal.py) sleeps a hard-coded 3 s whenever a pull
finds no message, and 0.5 s at a time while it waits for the ClientApp's reply in its own in-memory state:
a warm learner that trains in 0.2 s would spend most of each round in those sleeps. `prepare()` leaves
Flower's own SuperNode unchanged, except that the `time` module that loop sees is a stand-in whose sleeps
are short: the idle poll is 0.1 s for the first 2 s of idling after a message (when the round's next message
is due), then backs off to 1 s (so an idle fleet does not flood its SuperLink), and the local reply wait
ticks at 20 ms. Flower's installed files are not touched;
if its loop is not laid out as expected, the SuperNode runs as shipped and says so once.

A module beside warm_executor.py, which runs the SuperNode in its own process and passes `on_message`: called
each time a message is stored and its ClientApp task is waiting, so the launcher takes the task at once
instead of polling.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

# What the loop sleeps (Flower 1.42): when a pull found nothing; while its reply or an object is not stored yet.
FLOWER_IDLE_SLEEP_S = 3
FLOWER_LOCAL_WAIT_S = 0.5
FIRST_IDLE_POLL_S = 0.1
QUICK_IDLE_S = 2.0  # idling this long after a message at FIRST_IDLE_POLL_S: the next phase's message is due
IDLE_POLL_GROWTH = 1.5
MAX_IDLE_POLL_S = 1.0
LOCAL_WAIT_TICK_S = 0.02


class PromptClock:
    """Stands in for the `time` module inside the SuperNode loop, which uses nothing of it but sleep()."""

    def __init__(self) -> None:
        self.idle_poll_s = FIRST_IDLE_POLL_S
        self.idle_since: float | None = None  # the first idle sleep since the last message

    def message_pulled(self) -> None:
        """A message came: the next one (the round's next phase, the next round) is likely close behind."""
        self.idle_poll_s = FIRST_IDLE_POLL_S
        self.idle_since = None

    def sleep(self, seconds: float) -> None:
        if seconds == FLOWER_IDLE_SLEEP_S:
            if self.idle_since is None:  # the reply is sent (or the node just started): idling from now
                self.idle_since = time.monotonic()
            time.sleep(self.idle_poll_s)
            if time.monotonic() - self.idle_since >= QUICK_IDLE_S:
                self.idle_poll_s = min(self.idle_poll_s * IDLE_POLL_GROWTH, MAX_IDLE_POLL_S)
        elif seconds == FLOWER_LOCAL_WAIT_S:
            time.sleep(LOCAL_WAIT_TICK_S)
        else:
            time.sleep(seconds)

    def __getattr__(self, name: str):  # noqa: ANN204 - anything else is the real module's
        return getattr(time, name)


def install(loop_module, on_message: Callable[[], None] | None = None) -> PromptClock | None:  # noqa: ANN001
    """Give the SuperNode loop (Flower's module) a PromptClock, and call on_message per stored message; None,
    and nothing changed, if the loop is not the one we know."""
    pull = getattr(loop_module, "_pull_and_store_message", None)
    if getattr(loop_module, "time", None) is not time or not callable(pull):
        return None
    clock = PromptClock()

    def pull_and_note(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - Flower's own signature
        run_id = pull(*args, **kwargs)  # returns once the message is stored and its task created
        if run_id is not None:
            clock.message_pulled()
            if on_message is not None:
                on_message()
        return run_id

    loop_module.time = clock
    loop_module._pull_and_store_message = pull_and_note
    return clock


def _log(text: str) -> None:
    print(f"[prompt-supernode] {text}", file=sys.stderr, flush=True)


def prepare(on_message: Callable[[], None] | None = None) -> bool:
    """Timestamps in the SuperNode's log and the prompt loop, before `flower_supernode()` runs in this process;
    False (and said once) if Flower's loop is not the one this module knows."""
    from flwr.supercore.logger import update_console_handler
    from flwr.supernode import start_client_internal

    update_console_handler(timestamps=True)  # a learner's log says when each message came and went
    if install(start_client_internal, on_message) is None:
        _log("Flower's SuperNode loop is not the one this module knows: its 3 s idle poll stays")
        return False
    _log(f"idle poll {FIRST_IDLE_POLL_S}-{MAX_IDLE_POLL_S} s instead of Flower's {FLOWER_IDLE_SLEEP_S} s")
    return True
