"""`oae capture` on a real veth pair: frames sent from both ends (including one with a bad
check and one truncated frame) are captured on the receiving end, then dissected by tshark
with our Lua dissector and decoded by `oae decode`, and must show exactly what was sent.
Also: stopping by Ctrl-C leaves a complete file, and bad arguments give one-line errors."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from oae.capture import CaptureFormatError, read_capture
from oae.cli import main
from oae.testbed.kernel import VethPair
from oae.wireshark import tshark_fields

_spec = importlib.util.spec_from_file_location(
    "oae_exchange", Path(__file__).parent / "fixtures" / "oae_exchange.py"
)
assert _spec and _spec.loader
ex = sys.modules.get("oae_exchange") or importlib.util.module_from_spec(_spec)
if "oae_exchange" not in sys.modules:
    sys.modules["oae_exchange"] = ex  # dataclasses look their module up there
    _spec.loader.exec_module(ex)

FIELDS = [
    "eth.src",
    "eth.dst",
    "frame.len",
    "oae.opcode",
    "oae.phase",
    "oae.state",
    "oae.transition",
    "oae.direction",
    "oae.peer_half",
    "oae.tid",
    "oae.transfer",
    "oae.epoch",
    "oae.seq",
    "oae.nonce",
    "oae.commit_upto",
    "oae.held_upto",
    "oae.delivered_upto",
    "oae.sack",
    "oae.length",
    "oae.payload",
    "oae.check",
    "oae.check.status",
    "oae.error",
    "oae.error.offset",
    "_ws.expert.group",
    "_ws.col.Info",
]


def _oae(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oae.cli", *args], capture_output=True, text=True, timeout=30
    )


def _frames_on_disk(path: Path) -> int:
    """Frames complete in a file still being written (a partial last block is not one)."""
    n = 0
    try:
        for _ in read_capture(path.read_bytes() if path.exists() else b""):
            n += 1
    except CaptureFormatError:
        pass
    return n


def _expected(sent: Any) -> dict[str, str]:
    """What tshark must show for a valid sent frame, as -T fields prints it."""
    r = sent.record
    return {
        "oae.opcode": str(int(r.opcode)),
        "oae.phase": str(int(r.phase)),
        "oae.state": str(int(r.state)),
        "oae.transition": str(int(r.transition)),
        "oae.direction": str(int(r.direction)),
        "oae.peer_half": r.peer_half.hex(),
        "oae.tid": str(r.tid),
        "oae.transfer": str(r.tid) if r.tid else "",
        "oae.epoch": str(r.epoch),
        "oae.seq": str(r.seq),
        "oae.nonce": f"0x{r.nonce:08x}",
        "oae.commit_upto": str(r.commit_upto),
        "oae.held_upto": str(r.held_upto),
        "oae.delivered_upto": str(r.delivered_upto),
        "oae.sack": f"0x{r.sack:02x}",
        "oae.length": str(r.length),
        "oae.payload": r.payload.hex(),
        "oae.check": f"0x{int.from_bytes(sent.data[70:78], 'big'):016x}",
        "oae.check.status": "good",
        "oae.error": "",
    }


@pytest.fixture
def captured(veth_pair: VethPair, tmp_path: Path) -> tuple[Path, list[Any], str]:
    """The scripted exchange sent over the veth pair and captured on end b by `oae
    capture`; returns the file, what was sent, and the capture's stderr."""
    frames = ex.exchange(ex.mac_bytes(veth_pair.mac_a), ex.mac_bytes(veth_pair.mac_b))
    path = tmp_path / "exchange.pcapng"
    proc = ex.start_capture(veth_pair.if_b, veth_pair.ns_b, str(path), len(frames))
    socks = {
        "a": ex.open_sender(veth_pair.ns_a, veth_pair.if_a),
        "b": ex.open_sender(veth_pair.ns_b, veth_pair.if_b),
    }
    try:
        ex.send_all(frames, socks)
        proc.wait(timeout=20)
    finally:
        for s in socks.values():
            s.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    assert proc.returncode == 0, stderr
    return path, frames, stderr


def test_capture_dissected_by_tshark_equals_what_was_sent(
    captured: tuple[Path, list[Any], str],
) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed (CI installs it via scripts/setup.sh)")
    path, frames, stderr = captured
    assert f"{len(frames)} frames" in stderr and "stopped by count" in stderr
    rows = tshark_fields(path, FIELDS)
    assert len(rows) == len(frames)
    kinds = {s.kind for s in frames}
    assert kinds == {"ok", "bad-check", "truncated"}
    for sent, row in zip(frames, rows, strict=True):
        assert row["frame.len"] == str(len(sent.data))
        if sent.kind == "ok":
            got = {k: row[k] for k in _expected(sent)}
            assert got == _expected(sent), f"frame {sent}"
            r = sent.record
            arrow = "→" if r.direction == 0 else "←"
            info = row["_ws.col.Info"]
            assert info.startswith(f"{r.opcode.name} {r.phase.name}")
            if r.tid:
                assert f" tid={r.tid} {r.transition.name}{arrow} {r.state.name} " in info
            assert f"seq={r.seq}" in info
        elif sent.kind == "bad-check":
            assert row["oae.check.status"] == "bad"
            assert row["oae.error"] == "CHECK" and row["oae.error.offset"] == "70"
            assert row["_ws.col.Info"].startswith("[BAD CHECK]")
        else:
            assert row["oae.error"] == "TRUNCATED" and row["oae.error.offset"] == "50"
            assert row["_ws.col.Info"].startswith("[MALFORMED TRUNCATED")
            assert row["oae.check.status"] == ""
    # the transfer filter follows transfer 2 through its four signals (and the bad copy)
    t2 = tshark_fields(
        path,
        ["oae.transition", "oae.state", "oae.check.status"],
        display_filter="oae.transfer == 2",
    )
    assert [(r["oae.transition"], r["oae.state"]) for r in t2] == [
        ("1", "1"),
        ("2", "2"),
        ("3", "3"),
        ("4", "3"),
        ("4", "3"),
    ]
    assert [r["oae.check.status"] for r in t2][-1] == "bad"


def test_capture_decoded_by_oae_decode(captured: tuple[Path, list[Any], str]) -> None:
    path, frames, _ = captured
    out = _oae("decode", str(path), "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["counts"] == {"ok": len(frames) - 2, "bad": 2, "snapped": 0, "other": 0}
    for sent, got in zip(frames, doc["frames"], strict=True):
        assert got["src"].replace(":", "") == sent.data[6:12].hex()
        if sent.kind == "ok":
            assert got["status"] == "ok"
            assert got["record"]["seq"] == sent.record.seq
            assert got["record"]["payload"] == sent.record.payload.hex()
            assert got["record"]["transition"] == sent.record.transition.name
        else:
            want = {"bad-check": ("CHECK", 70), "truncated": ("TRUNCATED", 50)}[sent.kind]
            assert (got["error"]["code"], got["error"]["offset"]) == want
    # the frames sent by b were seen leaving, the frames of a arriving
    assert [f["outbound"] for f in doc["frames"]] == [s.side == "b" for s in frames]
    human = _oae("decode", str(path))
    assert human.returncode == 0
    lines = human.stdout.splitlines()
    assert len(lines) == len(frames)
    assert "CHECK at offset 70" in lines[[s.kind for s in frames].index("bad-check")]


def test_capture_interrupted_leaves_complete_pcap(veth_pair: VethPair, tmp_path: Path) -> None:
    """No --count: Ctrl-C (SIGINT) stops the capture, and the pcap file holds every frame."""
    frames = ex.exchange(ex.mac_bytes(veth_pair.mac_a), ex.mac_bytes(veth_pair.mac_b), 1)[:4]
    path = tmp_path / "cut.pcap"
    proc = ex.start_capture(veth_pair.if_b, veth_pair.ns_b, str(path), 1000, "--format", "pcap")
    sock = ex.open_sender(veth_pair.ns_a, veth_pair.if_a)
    try:
        ex.send_all([f for f in frames if f.side == "a"], {"a": sock})
        deadline_frames = sum(f.side == "a" for f in frames)
        for _ in range(100):  # wait until they are on disk (bounded: ~2 s)
            if _frames_on_disk(path) >= deadline_frames:
                break
            subprocess.run(["sleep", "0.02"], check=True)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    assert proc.returncode == 0, stderr
    assert "stopped by interrupt" in stderr
    packets = list(read_capture(path.read_bytes()))
    assert [p.data for p in packets] == [f.data for f in frames if f.side == "a"]


def test_capture_bad_arguments_give_one_line_errors(
    veth_pair: VethPair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked in-process (the errors come before any capturing starts)."""
    out = tmp_path / "x.pcapng"
    cases = [
        (["--iface", "oaenope0", "--netns", veth_pair.ns_b], "interface 'oaenope0'"),
        (["--iface", veth_pair.if_b, "--netns", "oaenonexistent"], "does not exist"),
        (["--iface", veth_pair.if_b, "--netns", veth_pair.ns_b, "--count", "0"], "--count"),
        (["--iface", veth_pair.if_b, "--netns", veth_pair.ns_b, "--duration", "-1"], "--duration"),
    ]
    for args, needle in cases:
        assert main(["capture", *args, "-w", str(out), "-q"]) == 2
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], err


def test_capture_duration_stops_with_valid_empty_file(veth_pair: VethPair, tmp_path: Path) -> None:
    path = tmp_path / "idle.pcapng"
    res = _oae(
        "capture",
        "--iface",
        veth_pair.if_a,
        "--netns",
        veth_pair.ns_a,
        "-w",
        str(path),
        "--duration",
        "0.3",
        "--ethertype",
        "0x88b5",
    )
    assert res.returncode == 0, res.stderr
    assert "stopped by duration" in res.stderr
    assert list(read_capture(path.read_bytes())) == []


def test_capture_of_a_real_engine_run(veth_pair: VethPair, tmp_path: Path) -> None:
    """Two real links (oae.runtime) exchange payloads both ways while `oae capture` records
    b's end and a raw socket injects a corrupt and a truncated frame. The capture holds
    every frame each engine sent (per-sender seq 1..n without gaps or repeats), the OFFERs
    carry the payloads the applications sent under tids 1..n (in order; a repeated OFFER
    carries the same payload), every transfer is seen
    offered, held, committed and delivered, and the injected frames are shown as bad —
    while b's engine dropped them for the same reasons."""
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed (CI installs it via scripts/setup.sh)")
    path = tmp_path / "engine.pcapng"
    run, stderr = ex.capture_engine_run(veth_pair, str(path))
    assert "stopped by interrupt" in stderr
    assert run.received_by_b == list(enumerate(run.to_b, start=1))
    assert run.received_by_a == list(enumerate(run.to_a, start=1))
    assert run.stats_b["drops"].get("check", 0) >= 1
    assert run.stats_b["drops"].get("truncated", 0) >= 1
    fields = ["frame.number", "eth.src", "oae.seq", "oae.nonce", "oae.tid", "oae.transition",
              "oae.payload", "oae.error", "oae.check.status"]  # fmt: skip
    rows = tshark_fields(path, fields)
    macs = {"a": veth_pair.mac_a, "b": veth_pair.mac_b}
    valid = [r for r in rows if not r["oae.error"]]
    for side, sent_by_app in (("a", run.to_b), ("b", run.to_a)):
        mine = [r for r in valid if r["eth.src"] == macs[side]]
        assert all(r["oae.check.status"] == "good" for r in mine)
        assert [int(r["oae.seq"]) for r in mine] == list(range(1, len(mine) + 1))
        offers = [(int(r["oae.tid"]), bytes.fromhex(r["oae.payload"])) for r in mine
                  if r["oae.transition"] == "1"]  # fmt: skip
        # an OFFER may be repeated (retransmission timer under load), never changed
        assert sorted(set(offers)) == list(enumerate(sent_by_app, start=1))
        first_offers = list(dict.fromkeys(t for t, _ in offers))
        assert first_offers == sorted(first_offers)  # first offered in tid order
    # the stats were read just before the links closed; a frame or two may follow them
    stats_out = {"a": run.stats_a["frames_out"], "b": run.stats_b["frames_out"]}
    for side in ("a", "b"):
        assert sum(r["eth.src"] == macs[side] for r in valid) >= stats_out[side]
    bad = [r for r in rows if r["oae.error"]]
    assert [(r["oae.error"], r["oae.check.status"]) for r in bad] == [
        ("CHECK", "bad"),
        ("TRUNCATED", ""),
    ]
    events = tshark_fields(
        path, ["frame.number", "oae.transfer.key", "oae.transfer.event"], all_values=True
    )
    for side, sent_by_app in (("a", run.to_b), ("b", run.to_a)):
        for tid in range(1, len(sent_by_app) + 1):
            ex.assert_lifecycle(ex.transfer_events(events, f"{macs[side]}/{tid}"))


def test_capture_on_a_testbed_link_by_name(tmp_path: Path) -> None:
    """`--testbed NAME --link LINK [--at NODE]` captures at that end of a running testbed's
    link (here the pair topology); a wrong end is a one-line error."""
    if os.geteuid() != 0:
        pytest.skip("needs root: brings a testbed up")
    name = f"cap{secrets.token_hex(2)}"
    up = _oae("testbed", "up", str(Path(__file__).parent.parent / "netns" / "pair.toml"),
              "--name", name, "--json")  # fmt: skip
    assert up.returncode == 0, up.stderr
    try:
        state = json.loads(up.stdout)
        link = state["links"][0]
        ns = {node: rec["ns"] for node, rec in state["nodes"].items()}
        path = tmp_path / "link.pcapng"
        bad = _oae("capture", "--testbed", name, "--link", link["name"], "--at", "nobody",
                   "-w", str(path))  # fmt: skip
        assert bad.returncode == 2 and "--at 'nobody'" in bad.stderr
        frames = ex.exchange(ex.mac_bytes(link["mac_a"]), ex.mac_bytes(link["mac_b"]), 1)[:3]
        proc = subprocess.Popen(
            [sys.executable, "-m", "oae.cli", "capture", "--testbed", name, "--link",
             link["name"], "-w", str(path), "--count", "3", "--duration", "20"],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stderr is not None
        assert f"capturing on {link['if_b']} in netns {ns[link['b']]}" in proc.stderr.readline()
        sock = ex.open_sender(ns[link["a"]], link["if_a"])
        try:
            ex.send_all(frames, {"a": sock, "b": sock})
            proc.wait(timeout=20)
        finally:
            sock.close()
            if proc.poll() is None:
                proc.kill()
        assert [p.data for p in read_capture(path.read_bytes())] == [f.data for f in frames]
    finally:
        down = _oae("testbed", "down", name)
        assert down.returncode == 0, down.stderr
