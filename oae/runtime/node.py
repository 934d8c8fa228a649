"""A node: several OAE links run together, and (optionally) a control socket that lets
other processes ask for status, send, receive and read outcomes.

`oae node` is this class behind a command line; tests and experiments use it directly:

    async with open_node([LinkSpec("eth1")], control="/run/oae/n1.sock") as node:
        await node.link("eth1").wait_up()
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from oae.errors import UsageError
from oae.runtime.control import serve_control
from oae.runtime.link import Link, LinkOptions, Message, open_link, unwrap_single


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
    with a state dir they survive a crash of the node) until `recv` hands them out."""

    def __init__(self) -> None:
        self.links: dict[str, Link] = {}
        self.started = trio.current_time()
        self.pid = os.getpid()
        self.control: str | None = None

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
        return {
            "pid": self.pid,
            "control": self.control,
            "uptime_s": round(trio.current_time() - self.started, 3),
            "links": [link.stats() for link in self.links.values()],
        }

    async def recv(self, iface: str | None, max_count: int, timeout: float) -> list[Message]:
        """Up to max_count delivered messages, waiting up to `timeout` s for the first;
        released as they are returned (the control socket releases them only once its
        answer is written: `Link.taking_messages`)."""
        async with self.link(iface).taking_messages(max_count, timeout) as msgs:
            return msgs


@asynccontextmanager
async def open_node(specs: Sequence[LinkSpec], control: str | None = None) -> AsyncIterator[Node]:
    """Run the links of `specs` (and a control socket at `control`, if given) until the
    block is left; everything is stopped and removed on the way out."""
    if not specs:
        raise UsageError("a node needs at least one link (--iface)")
    names = [s.iface for s in specs]
    if len(set(names)) != len(names):
        raise UsageError("each interface may appear only once per node")
    node = Node()
    async with AsyncExitStack() as stack:
        for spec in specs:
            link = await stack.enter_async_context(open_link(
                spec.iface, spec.netns, spec.peer, spec.key, state_dir=spec.state_dir,
                options=spec.options))  # fmt: skip
            node.links[spec.iface] = link
        with unwrap_single():
            async with trio.open_nursery() as nursery:
                if control is not None:
                    node.control = str(Path(control))
                    await nursery.start(serve_control, node, control)
                try:
                    yield node
                finally:
                    nursery.cancel_scope.cancel()
