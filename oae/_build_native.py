"""cffi (API mode) builders for oae's C hot path, run by setup.py at install time.

Each builder compiles a set of csrc/ sources into one extension module. A missing compiler
or missing Python headers stop the build with a message that says which one.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
CFLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-D_GNU_SOURCE"]


def _preflight() -> None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    exe = cc.split()[0]
    if shutil.which(exe) is None:
        raise SystemExit(
            f"oae build: C compiler {exe!r} not found; install one "
            "(Debian/Ubuntu: apt-get install gcc) or set CC"
        )
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.exists():
        raise SystemExit(
            f"oae build: Python headers not found ({include} is missing); install them "
            "(Debian/Ubuntu: apt-get install python3-dev)"
        )


def _builder(module: str, cdef_headers: list[str], sources: list[str]) -> FFI:
    ffi = FFI()
    cdef = "\n".join(_cdef_of(CSRC / h) for h in cdef_headers)
    ffi.cdef(cdef)
    includes = "\n".join(f'#include "{h}"' for h in cdef_headers)
    ffi.set_source(
        module,
        includes,
        sources=[str((CSRC / s).relative_to(ROOT)) for s in sources],
        include_dirs=[str(CSRC.relative_to(ROOT))],
        extra_compile_args=CFLAGS,
    )
    return ffi


def _cdef_of(header: Path) -> str:
    """The part of a header between `/* cdef-begin */` and `/* cdef-end */` markers, or
    the declarations cffi can parse if the header has no markers."""
    text = header.read_text()
    if "/* cdef-begin */" in text:
        return text.split("/* cdef-begin */", 1)[1].split("/* cdef-end */", 1)[0]
    raise SystemExit(f"oae build: {header} has no /* cdef-begin */ ... /* cdef-end */ block")


_preflight()
os.chdir(ROOT)

wire_ffi = _builder("oae._wire", ["wire.h"], ["wire.c"])
pump_ffi = _builder(
    "oae._pump",
    ["wire.h", "link.h", "durable.h", "evlog.h", "pump.h", "epoch.h", "epochrun.h"],
    ["wire.c", "link.c", "durable.c", "evlog.c", "pump.c", "pingpong.c", "epoch.c", "epochrun.c",
     "txring.c"],
)
link_ffi = _builder(
    "oae._link", ["wire.h", "link.h", "linksim.h"], ["wire.c", "link.c", "linksim.c"]
)
epoch_ffi = _builder("oae._epoch", ["epoch.h"], ["epoch.c"])


if __name__ == "__main__":
    wire_ffi.compile(tmpdir=str(ROOT), verbose=False)
    pump_ffi.compile(tmpdir=str(ROOT), verbose=False)
    link_ffi.compile(tmpdir=str(ROOT), verbose=False)
    epoch_ffi.compile(tmpdir=str(ROOT), verbose=False)
