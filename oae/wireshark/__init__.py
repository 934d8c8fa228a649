"""The Wireshark dissector shipped as package data (`oae.lua`), and where Wireshark looks
for personal Lua plugins, so `oae wireshark install` can put it there."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from oae.errors import UsageError

DISSECTOR_NAME = "oae.lua"


def dissector_path() -> Path:
    """The packaged dissector on disk (package data; a real file in every install layout
    that oae supports: source tree, wheel, editable)."""
    path = Path(str(resources.files("oae.wireshark").joinpath(DISSECTOR_NAME)))
    if not path.is_file():
        raise UsageError(f"the packaged dissector is missing: {path} (reinstall oae)")
    return path


def personal_plugin_dir() -> Path:
    """Wireshark 4.x's personal plugin folder: Lua scripts placed directly in it are loaded
    at start-up (Help > About > Folders > Personal Lua Plugins)."""
    return Path(os.path.expanduser("~")) / ".local" / "lib" / "wireshark" / "plugins"


def install(target_dir: Path | None = None) -> tuple[Path, bool]:
    """Copy the dissector into target_dir (default: the personal plugin folder), creating
    it. Returns (installed path, whether anything changed)."""
    src = dissector_path()
    folder = target_dir if target_dir is not None else personal_plugin_dir()
    dest = folder / DISSECTOR_NAME
    if dest.is_file() and filecmp.cmp(src, dest, shallow=False):
        return dest, False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".lua.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        raise UsageError(f"cannot install the dissector into {folder}: {exc.strerror}") from None
    return dest, True


def tshark_fields(
    capture: Path | str,
    fields: list[str],
    prefs: dict[str, str] | None = None,
    display_filter: str | None = None,
    two_pass: bool = False,
    all_values: bool = False,
    timeout: float = 60.0,
) -> list[dict[str, str]]:
    """Dissect `capture` with tshark and the packaged dissector; one dict per frame mapping
    each of `fields` to its first value ("" when absent), or with `all_values` to all its
    values joined by "," (a frame may concern several transfers); a Lua error in the dissector
    raises UsageError rather than passing unnoticed. `prefs` are `-o` preferences,
    e.g. {"oae.key": "00..0f"}. Raises UsageError if tshark is missing or fails."""
    tshark = shutil.which("tshark")
    if tshark is None:
        raise UsageError("tshark is not installed (Debian: apt-get install tshark)")
    cmd = [tshark, "-n", "-X", f"lua_script:{dissector_path()}", "-r", str(capture)]
    for name, value in (prefs or {}).items():
        cmd += ["-o", f"{name}:{value}"]
    if display_filter:
        cmd += ["-Y", display_filter]
    if two_pass:  # lets fields that look ahead (oae.transfer.next) be filled
        cmd += ["-2"]
    cmd += [
        "-T",
        "fields",
        "-E",
        "separator=\t",
        "-E",
        "occurrence=" + ("a" if all_values else "f"),
        "-E",
        "quote=n",
    ]
    columns = [*fields, "frame.number", "_ws.lua.error"]
    for name in columns:
        cmd += ["-e", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Running as user" not in ln]
    if proc.returncode != 0 or errors:
        raise UsageError(f"tshark failed ({proc.returncode}): {' | '.join(errors)[:500]}")
    rows = []
    for ln in proc.stdout.splitlines():
        values = ln.split("\t")
        row = dict(zip(columns, values + [""] * (len(columns) - len(values)), strict=True))
        if row.pop("_ws.lua.error"):
            raise UsageError(f"the oae dissector failed (Lua error) on frame {row['frame.number']}")
        rows.append({name: row[name] for name in fields})
    return rows
