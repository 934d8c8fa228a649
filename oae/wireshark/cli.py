"""`oae wireshark install|path`: put the oae dissector where Wireshark loads it, or say
where the packaged copy is (for `tshark -X lua_script:$(oae wireshark path)`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from oae.wireshark import dissector_path, install, personal_plugin_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "wireshark",
        help="install the oae Wireshark dissector, or print where it is",
        description=(
            "The oae Wireshark dissector (Lua, Wireshark 4.x) decodes every field of wire "
            "format v1, verifies the check and flags malformed frames. 'install' copies it "
            f"to the personal Lua plugin folder ({personal_plugin_dir()}) so Wireshark and "
            "tshark load it at start; 'path' prints the packaged file, for one-off use: "
            "tshark -X lua_script:$(oae wireshark path) -r FILE. See docs/wireshark.md."
        ),
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    inst = actions.add_parser(
        "install",
        help="copy the dissector into the personal plugin folder",
        description="Copy the dissector into Wireshark's personal Lua plugin folder "
        "(or --dir); prints the installed path. Restart Wireshark (or Analyze > Reload Lua "
        "Plugins) to load it.",
    )
    inst.add_argument("--dir", type=Path, help="install into this folder instead")
    inst.set_defaults(func=run_install)
    path = actions.add_parser(
        "path",
        help="print the packaged dissector's path",
        description="Print the path of the dissector shipped with this oae installation.",
    )
    path.set_defaults(func=run_path)


def run_install(args: argparse.Namespace) -> int:
    dest, changed = install(args.dir)
    print(f"{dest}" + ("" if changed else " (already up to date)"))
    sudo_user = os.environ.get("SUDO_USER")
    if args.dir is None and os.geteuid() == 0 and sudo_user and sudo_user != "root":
        print(f"oae wireshark: note: installed for root; run it without sudo to install it "
              f"for {sudo_user}", file=sys.stderr)  # fmt: skip
    return 0


def run_path(args: argparse.Namespace) -> int:
    print(dissector_path())
    return 0
