"""A node: several OAE links run together, and (optionally) a control socket that lets
other processes ask for status, send, receive and read outcomes.

`oae node` is this class behind a command line; tests and experiments use it directly:

    async with open_node([LinkSpec("eth1")], control="/run/oae/n1.sock") as node:
        await node.link("eth1").wait_up()
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from oae.errors import UsageError
from oae.runtime.control import serve_control
from oae.runtime.link import Link, LinkOptions, Message, Outcome, open_link, unwrap_single

INBOX_MAX = 100_000  # a layer's messages kept per link for `recv` before the oldest go

# An extra control-socket op: the request object in, the answer's fields out.
Op = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
Sender = Callable[[Link, Sequence[bytes]], Awaitable[list[Outcome]]]


@dataclass(frozen=True)
class LinkSpec:
    """One link of a node: an interface (in a namespace), optional peer, key, state dir."""

    iface: str
    netns: str | None = None
    peer: str | None = None
    key: bytes | None = None
    state_dir: str | None = None
    options: LinkOptions = field(default_factory=LinkOptions)


class Node:
    """Links by interface name. Delivered messages wait in each link (unreleased, so the
    link's receive capacity pushes back on the peer rather than anything being dropped, and
    with a state dir they survive a crash of the node) until `recv` hands them out.

    A layer above the links (the epoch layer of `oae node --epochs`, opened with
    `layered=True`) reads the links itself and plugs in through `ops` (control-socket ops
    of its own), `sender` (how `send` reaches a link), `deliver` (it feeds an in-memory
    inbox per link that `recv` then reads: what it holds is lost with the process) and
    `extra_status` (sections added to `status`)."""

    def __init__(self, layered: bool = False) -> None:
        self.links: dict[str, Link] = {}
        self.started = trio.current_time()
        self.pid = os.getpid()
        self.control: str | None = None
        self.layered = layered
        self.ops: dict[str, Op] = {}
        self.sender: Sender | None = None
        self.extra_status: dict[str, Callable[[], Any]] = {}
        self._inbox: dict[str, deque[Message]] = {}
        self._arrived: dict[str, trio.Event] = {}
        self.dropped: dict[str, int] = {}

    def link(self, iface: str | None = None) -> Link:
        """The link on `iface`; with one link, `iface` may be omitted."""
        if iface is None:
            if len(self.links) != 1:
                raise UsageError(f"node has {len(self.links)} links: name one of "
                                 f"{', '.join(self.links)}")  # fmt: skip
            return next(iter(self.links.values()))
        try:
            return self.links[iface]
        except KeyError:
            raise UsageError(f"no link on {iface!r}; links: {', '.join(self.links)}") from None

    def status(self) -> dict[str, Any]:
        links = []
        for name, link in self.links.items():
            st = link.stats()
            if self.layered:
                st.update(inbox=len(self._inbox[name]), inbox_dropped=self.dropped[name])
            links.append(st)
        return {
            "pid": self.pid,
            "control": self.control,
            "uptime_s": round(trio.current_time() - self.started, 3),
            "links": links,
            **{key: get() for key, get in self.extra_status.items()},
        }

    async def send(self, iface: str | None, payloads: Sequence[bytes]) -> list[Outcome]:
        """Transfer `payloads` in order on the link on `iface` (through the layer's
        `sender` if one is plugged in) and return their outcomes."""
        link = self.link(iface)
        if self.sender is not None:
            return await self.sender(link, payloads)
        return await link.send_many(payloads)

    async def recv(self, iface: str | None, max_count: int, timeout: float) -> list[Message]:
        """Up to max_count delivered messages, waiting up to `timeout` s for the first;
        released as they are returned (the control socket releases them only once its
        answer is written: `Link.taking_messages`). A layered node's come from its inbox."""
        if not self.layered:
            async with self.link(iface).taking_messages(max_count, timeout) as msgs:
                return msgs
        name = self.link(iface).iface
        inbox = self._inbox[name]
        with trio.move_on_after(timeout):
            while not inbox:
                self._arrived[name] = trio.Event()
                await self._arrived[name].wait()
        return [inbox.popleft() for _ in range(min(max_count, len(inbox)))]

    def deliver(self, iface: str, msg: Message) -> None:
        """A layered node's layer puts a delivered message into the inbox of `iface`."""
        inbox = self._inbox[iface]
        if len(inbox) == INBOX_MAX:
            self.dropped[iface] += 1
        inbox.append(msg)
        self._arrived[iface].set()


@asynccontextmanager
async def open_node(
    specs: Sequence[LinkSpec], control: str | None = None, *, layered: bool = False
) -> AsyncIterator[Node]:
    """Run the links of `specs` (and a control socket at `control`, if given) until the
    block is left; everything is stopped and removed on the way out. `layered`: a layer
    above reads the links' deliveries (and may `deliver` them to the node's inbox)."""
    if not specs:
        raise UsageError("a node needs at least one link (--iface)")
    names = [s.iface for s in specs]
    if len(set(names)) != len(names):
        raise UsageError("each interface may appear only once per node")
    node = Node(layered)
    async with AsyncExitStack() as stack:
        for spec in specs:
            link = await stack.enter_async_context(open_link(
                spec.iface, spec.netns, spec.peer, spec.key, state_dir=spec.state_dir,
                options=spec.options))  # fmt: skip
            node.links[spec.iface] = link
            if layered:
                node._inbox[spec.iface] = deque(maxlen=INBOX_MAX)
                node._arrived[spec.iface] = trio.Event()
                node.dropped[spec.iface] = 0
        with unwrap_single():
            async with trio.open_nursery() as nursery:
                if control is not None:
                    node.control = str(Path(control))
                    await nursery.start(serve_control, node, control)
                try:
                    yield node
                finally:
                    nursery.cancel_scope.cancel()
