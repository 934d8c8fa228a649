"""The Python face of the link engine: configuration and durable-register validation,
argument errors, and the `oae bench engine` part's document shape."""

from __future__ import annotations

import pytest

import oae
from oae.bench.cli import BenchOptions
from oae.bench.engine import run
from oae.engine import Durable, LinkConfig, LinkEngine
from oae.model.link import LinkModel

MAC = bytes.fromhex("02000000000a")


@pytest.mark.parametrize(
    "kw",
    [
        dict(mac=b"\x02"),
        dict(nonce=0),
        dict(nonce=2**32),
        dict(window=0),
        dict(window=4097),
        dict(beat=3),
        dict(key=b"short"),
        dict(rx_capacity=0),
        dict(rto_ns=0),
        dict(peer_mac=b"\x01\x02"),
    ],
)
def test_bad_config_is_rejected_with_a_reason(kw: dict) -> None:
    base = dict(mac=MAC, nonce=1)
    base.update(kw)
    with pytest.raises(ValueError):
        LinkConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [LinkEngine, LinkModel], ids=["c", "model"])
@pytest.mark.parametrize(
    "durable",
    [
        Durable(None, out_hi=3, out_settled=4, abort_lo=0, abort_hi=0, in_delivered=0, epoch=0),
        Durable(None, out_hi=9, out_settled=9, abort_lo=5, abort_hi=3, in_delivered=0, epoch=0),
        Durable(None, out_hi=4, out_settled=4, abort_lo=0, abort_hi=2, in_delivered=0, epoch=0),
        Durable(None, out_hi=500, out_settled=0, abort_lo=0, abort_hi=0, in_delivered=0, epoch=0),
    ],
)
def test_inconsistent_durable_registers_are_refused(cls: type, durable: Durable) -> None:
    with pytest.raises(ValueError):
        cls(LinkConfig(mac=MAC, nonce=1, window=64), durable)


@pytest.mark.parametrize("cls", [LinkEngine, LinkModel], ids=["c", "model"])
def test_restored_engine_starts_from_its_registers(cls: type) -> None:
    d = Durable(MAC[:5] + b"\x0b", out_hi=7, out_settled=5, abort_lo=0, abort_hi=0,
                in_delivered=3, epoch=4)  # fmt: skip
    e = cls(LinkConfig(mac=MAC, nonce=1), d)
    assert e.durable() == d
    s = e.stats()
    assert (s["out_hi"], s["out_settled"], s["in_delivered"], s["phase"]) == (7, 5, 3, 1)


@pytest.mark.parametrize("cls", [LinkEngine, LinkModel], ids=["c", "model"])
def test_offer_arguments(cls: type) -> None:
    e = cls(LinkConfig(mac=MAC, nonce=1))
    with pytest.raises(ValueError):
        e.offer(bytes(17))
    assert e.offer(b"ok") == 0  # not LIVE yet: not taken, no tid used
    assert e.stats()["out_hi"] == 0


def test_public_names() -> None:
    for name in ("LinkEngine", "LinkConfig", "Durable", "LinkUp", "LinkDown", "Delivered",
                 "Committed", "Aborted", "Persist", "Offered", "Reflected", "Drop"):  # fmt: skip
        assert name in oae.__all__ and hasattr(oae, name)


def test_bench_part_reports_figures_with_units() -> None:
    doc = run(BenchOptions(seconds=0.05, repeats=1, progress=False))
    figures = {k for k in doc if k != "units"}
    assert figures == {"c", "c_from_python", "model", "ratio", "ratio_from_python"}
    assert set(doc["units"]) == figures
    assert all(doc[k] > 0 for k in figures)
    assert doc["ratio"] == pytest.approx(doc["c"] / doc["model"])
