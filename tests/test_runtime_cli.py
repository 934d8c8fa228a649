"""Command-line errors of `oae node/status/send/recv/outcomes`: one line naming the problem,
exit 2, nothing left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from oae.errors import UsageError
from oae.runtime.cli import read_key_file
from oae.runtime.control import find_control_path

ROOT = Path(__file__).resolve().parent.parent


def oae(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*prefix, sys.executable, "-m", "oae.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def one_line_error(cp: subprocess.CompletedProcess[str], needle: str) -> None:
    assert cp.returncode == 2, cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], cp.stderr


def test_client_without_a_node_gets_one_line(tmp_path) -> None:
    sock = tmp_path / "none.sock"
    for cmd in (("status",), ("send", "hi"), ("recv",), ("outcomes",), ("send", "--no-wait", "x")):
        one_line_error(oae(*cmd, "--control", str(sock)), f"no node listens on {sock}")


def test_bad_key_file_and_bad_options(tmp_path) -> None:
    key = tmp_path / "k"
    key.write_text("not a key")
    one_line_error(oae("node", "--iface", "lo", "--key-file", str(key)), "16 raw bytes")
    one_line_error(oae("node", "--iface", "lo", "--key-file", str(tmp_path / "missing")),
                   "No such file")  # fmt: skip
    one_line_error(oae("recv", "--control", str(tmp_path / "x"), "--count", "0"), "--count")
    one_line_error(oae("outcomes", "--control", str(tmp_path / "x"), "--timeout", "-1"),
                   "--timeout")  # fmt: skip
    one_line_error(oae("send", "--control", str(tmp_path / "x"), "--key", "3", "x"), "--no-wait")
    bad = oae("node", "--iface", "lo", "--beat", "3")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_key_file_formats(tmp_path) -> None:
    raw = tmp_path / "raw"
    raw.write_bytes(bytes(range(16)))
    hexf = tmp_path / "hex"
    hexf.write_text(bytes(range(16)).hex() + "\n")
    assert read_key_file(str(raw)) == read_key_file(str(hexf)) == bytes(range(16))


def test_control_path_resolution(tmp_path) -> None:
    assert find_control_path(str(tmp_path / "c.sock"), None, None) == str(tmp_path / "c.sock")
    assert find_control_path(None, "eth1", "ns1").endswith("node-ns1-eth1.sock")
    if not os.path.isdir("/run/oae") or not os.listdir("/run/oae"):
        with pytest.raises(UsageError, match="no running node"):
            find_control_path(None, None, None)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to drop CAP_NET_RAW")  # fmt: skip
def test_node_without_cap_net_raw_says_so(tmp_path) -> None:
    sock = tmp_path / "n.sock"
    cp = oae("node", "--iface", "lo", "--no-state", "--control", str(sock),
             prefix=("setpriv", "--bounding-set=-net_raw"))  # fmt: skip
    one_line_error(cp, "need root or CAP_NET_RAW")
    assert not sock.exists()
