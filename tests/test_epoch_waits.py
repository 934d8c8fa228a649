"""The epoch daemon's waits miss nothing: a decision that comes after the daemon checked
its condition but before its wait tasks first run still wakes it (once, that slept until
the request's timeout: `epoch-outcome` answered after 30 s)."""

from __future__ import annotations

from collections.abc import Awaitable
from types import SimpleNamespace

import trio

from oae.epoch.daemon import EpochService


class Decisions:
    """A layer whose waits are armed when called, as the real ones."""

    def __init__(self) -> None:
        self.decided = False
        self._event: trio.Event | None = None

    def wait_decision(self) -> Awaitable[None]:
        if self._event is None:
            self._event = trio.Event()
        return self._event.wait()

    wait_change = wait_decision

    def is_decided(self) -> bool:
        return self.decided

    async def decide(self) -> None:
        self.decided = True
        if self._event is not None:
            self._event.set()
            self._event = None


async def test_a_decision_between_the_check_and_the_waits_wakes_the_daemon() -> None:
    # The decision becomes runnable before _until checks; it runs at _until's first
    # checkpoint, in one batch with the wait tasks, in an order Trio randomizes: armed
    # only when their tasks ran, the waits missed it about one time in two.
    for _ in range(20):
        layer = Decisions()
        service = SimpleNamespace(layer=layer, node=SimpleNamespace(links={}))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(layer.decide)
            with trio.fail_after(2):
                done = await EpochService._until(service, layer.is_decided, 30.0,  # type: ignore[arg-type]
                                                 layer.wait_decision)  # fmt: skip
        assert done
