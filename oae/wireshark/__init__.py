"""The Wireshark dissector shipped as package data (`oae.lua`), and where Wireshark looks
for personal Lua plugins, so `oae wireshark install` can put it there."""

from __future__ import annotations

import filecmp
import os
import shutil
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
