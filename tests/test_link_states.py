"""The link-phase transition table is the code's own, docs/protocol.md embeds the diagram
generated from it, and the engine never changes phase along an edge outside it (timers,
frames and the application's reset())."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from test_link import Pair

from oae.engine import LinkEngine, state_diagram, transitions
from oae.model.link import LinkModel
from oae.wire import Phase

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def test_protocol_doc_embeds_the_generated_diagram_and_table() -> None:
    text = DOC.read_text()
    blocks = re.findall(r"```mermaid\n(.*?)\n```", text, re.S)
    assert state_diagram() in blocks
    plain = text.replace("`", "")
    for a, b, trigger in transitions():
        assert f"| {a.name} | {b.name} | {trigger} |" in plain


class Tracked:
    """An engine whose phase changes are recorded."""

    def __init__(self, engine: object, seen: set[tuple[Phase, Phase]]) -> None:
        self.engine = engine
        self.seen = seen

    def __getattr__(self, name: str) -> object:
        fn = getattr(self.engine, name)
        if name not in ("on_frame", "on_timeout", "poll_tx", "reset"):
            return fn

        def tracked(*args: object) -> object:
            before = self.engine.stats()["phase"]  # type: ignore[attr-defined]
            out = fn(*args)
            after = self.engine.stats()["phase"]  # type: ignore[attr-defined]
            self.seen.add((Phase(before), Phase(after)))
            return out

        return tracked


@pytest.mark.parametrize("cls", [LinkEngine, LinkModel], ids=["c", "model"])
def test_engine_moves_only_along_the_table(cls: type) -> None:
    seen: set[tuple[Phase, Phase]] = set()
    p = Pair(cls, persist=True)
    p.ends = [Tracked(e, seen) for e in p.ends]  # type: ignore[misc]

    def cut(steps: int) -> None:
        for _ in range(steps):
            p.step(deliver=False)
            p.now += 10

    p.up()
    p.ends[0].offer(b"a")
    p.run(3)
    cut(300)  # LIVE -> DISCOVER on both ends
    p.run(100)  # DISCOVER -> RECONCILE -> LIVE
    # A -> B fails one way: B gives up and rediscovers; A, still LIVE, hears B's HELLO
    # (LIVE -> RECONCILE)
    while p.ends[0].stats()["phase"] == Phase.LIVE:
        p.step(only=1)
        p.now += 10
    assert p.ends[0].stats()["phase"] == Phase.RECONCILE
    p.run(100)
    # B restarts from its registers; the wire dies during the reconciliation that follows
    # (RECONCILE -> DISCOVER)
    p.cfg[1] = replace(p.cfg[1], nonce=999)
    p.ends[1] = Tracked(cls(p.cfg[1], p.durable[1]), seen)  # type: ignore[call-overload]
    while p.ends[1].stats()["phase"] != Phase.RECONCILE:
        p.step()
        p.now += 10
    cut(300)
    p.run(200)
    assert [e.stats()["phase"] for e in p.ends] == [Phase.LIVE, Phase.LIVE]
    table = {(a, b) for a, b, _ in transitions()}
    assert seen <= table, seen - table
    # and the scenario exercised every edge of the table
    assert seen == table, table - seen


@pytest.mark.parametrize("cls", [LinkEngine, LinkModel], ids=["c", "model"])
def test_reset_moves_only_along_its_edges(cls: type) -> None:
    """reset() leaves LIVE and RECONCILE for DISCOVER (the table's reset rows), and the
    link comes back through discovery and a round."""
    seen: set[tuple[Phase, Phase]] = set()
    p = Pair(cls, gates=True)
    p.ends = [Tracked(e, seen) for e in p.ends]  # type: ignore[misc]
    p.up()
    seen.clear()
    p.ends[0].reset(p.now)  # LIVE -> DISCOVER
    assert (Phase.LIVE, Phase.DISCOVER) in seen
    while p.ends[0].stats()["phase"] != Phase.RECONCILE:
        p.step()
        p.now += 10
    p.ends[0].reset(p.now)  # RECONCILE -> DISCOVER
    assert (Phase.RECONCILE, Phase.DISCOVER) in seen
    p.ends[0].reset(p.now)  # DISCOVER: refused, no move
    p.run(100)
    assert [e.stats()["phase"] for e in p.ends] == [Phase.LIVE, Phase.LIVE]
    resets = {(a, b) for a, b, trigger in transitions() if trigger.startswith("reset()")}
    assert resets == {(Phase.LIVE, Phase.DISCOVER), (Phase.RECONCILE, Phase.DISCOVER)}
    table = {(a, b) for a, b, _ in transitions()}
    assert seen <= table, seen - table
