"""Build of the optional C++ extensions: `bitnas.deploy._engine` (the 1-bit inference kernels) and
`bitnas.binary._fused` (fused element-wise passes of 1-bit training).

Metadata lives in pyproject.toml. The extension is compiled with the machine's C++ compiler
(C++17, -O3). Every ISA file is always compiled, each with its own flags on x86-64 (the AVX2
unit with -mavx2 -mfma -mpopcnt -mbmi2, the AVX-512 unit with -mavx512f -mavx512bw -mavx512vl
-mavx512vpopcntdq, the AMX unit with -mamx-tile -mamx-int8 and those, or without them, as an empty
row, where the compiler lacks AMX) while everything else stays portable; the row of the ISA table
(csrc/isa.cc) is picked at run time from the CPU's features. If the compiler
is missing or the build fails, bitnas still installs (the torch path works) and
`engine="bitpack"` explains how to build the extension; training then runs the same arithmetic
through torch (bitwise the same results, more passes).
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

CSRC = Path("bitnas") / "deploy" / "csrc"
FUSED = Path("bitnas") / "binary" / "csrc"
FUSED_SOURCES = ["fused.cc", "layout.cc"]
SOURCES = ["bindings.cc", "driver.cc", "isa.cc", "kernels_reference.cc", "kernels_scalar.cc", "kernels_avx2.cc",
           "kernels_avx512.cc", "dense_avx512.cc", "kernels_amx.cc"]
X86 = platform.machine().lower() in ("x86_64", "amd64", "x64")
UNIX_FLAGS = ["-O3", "-std=c++17", "-fvisibility=hidden", "-ffp-contract=off", "-pthread"]
# Per-file instruction-set flags, by the suffix of the kernel file.
ISA_FLAGS = {
    "_avx2.cc": ["-mavx2", "-mfma", "-mpopcnt", "-mbmi2"],
    "_avx512.cc": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vpopcntdq", "-mavx2", "-mfma", "-mpopcnt",
                   "-mbmi2", "-Wno-maybe-uninitialized"],
    "_amx.cc": ["-mamx-tile", "-mamx-int8", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vpopcntdq", "-mavx2",
                "-mfma", "-mpopcnt", "-mbmi2"],
}


class OptionalBuildExt(build_ext):
    """Per-file flags for the ISA units; a failed build leaves a warning, not a failed install."""

    def build_extension(self, ext) -> None:
        compiler = self.compiler
        original = getattr(compiler, "_compile", None)
        if original is not None and X86:
            def _compile(obj, src, ext_, cc_args, extra_postargs, pp_opts):
                extra = list(extra_postargs)
                for suffix, flags in ISA_FLAGS.items():
                    if src.endswith(suffix):
                        extra += flags
                try:
                    return original(obj, src, ext_, cc_args, extra, pp_opts)
                except CompileError:
                    if not src.endswith("_amx.cc"):
                        raise
                    # A compiler without AMX (GCC < 11): the unit compiles to an empty row.
                    sys.stderr.write("warning: bitnas: this compiler cannot build AMX code; the engine's amx row is "
                                     "left out\n")
                    return original(obj, src, ext_, cc_args, list(extra_postargs), pp_opts)
            compiler._compile = _compile
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001 - any compiler failure: install without the extension
            if os.environ.get("BITNAS_REQUIRE_ENGINE"):
                raise
            sys.stderr.write(f"warning: bitnas: the C++ inference engine was not built ({e}); bitnas works "
                             "without it (engine='torch'). Install a C++17 compiler and run `pip install -e .` "
                             "again to build it.\n")
        finally:
            if original is not None:
                compiler._compile = original


def extensions() -> list:
    try:
        import pybind11
    except ImportError:
        sys.stderr.write("warning: bitnas: pybind11 not found; the C++ inference engine is not built\n")
        return []
    from setuptools import Extension

    return [Extension(
        "bitnas.deploy._engine",
        sources=[str(CSRC / s) for s in SOURCES],
        include_dirs=[pybind11.get_include(), str(CSRC)],
        depends=[str(CSRC / h) for h in ("engine.h", "detail.h", "driver.h", "isa.h", "avx512.h")],
        language="c++",
        extra_compile_args=UNIX_FLAGS,
        extra_link_args=["-pthread"],
    ), Extension(
        "bitnas.binary._fused",
        sources=[str(FUSED / s) for s in FUSED_SOURCES],
        include_dirs=[pybind11.get_include(), str(FUSED)],
        depends=[str(FUSED / h) for h in ("layout.h", "kernel_util.h")],
        language="c++",
        extra_compile_args=UNIX_FLAGS,
        extra_link_args=["-pthread"],
    )]


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
