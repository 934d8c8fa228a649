"""Build hook: compiles the C hot path in csrc/ through cffi (API mode)."""

from setuptools import setup

setup(cffi_modules=["oae/_build_native.py:wire_ffi", "oae/_build_native.py:pump_ffi",
                      "oae/_build_native.py:link_ffi", "oae/_build_native.py:epoch_ffi"])
