"""Compiling the CUDA sources in tests without a GPU: nvcc (cubin, with ptxas' resource report),
NVRTC through CuPy, and g++ with a CUDA shim header (the kernels on CPU threads). Each helper
asserts a clean build and skips where the tool is missing."""

import ctypes
import os
import re
import shutil
import subprocess

import pytest

NVCC = shutil.which("nvcc") or ("/usr/local/bin/nvcc" if os.path.exists("/usr/local/bin/nvcc")
                                else None)


def nvcc_spills(source: str, arch: str, tmp_path, defines=()) -> list[tuple[str, str]]:
    """Build ``source`` to a cubin for ``arch`` with warnings as errors; returns ptxas'
    (spill stores, spill loads) byte counts, one pair per kernel."""
    if NVCC is None:
        pytest.skip("nvcc is not installed")
    cubin = subprocess.run(
        [NVCC, f"-arch={arch}", "-cubin", "-Xptxas", "-v", "-Werror", "all-warnings", *defines,
         "-o", str(tmp_path / "kernels.cubin"), source],
        capture_output=True, text=True,
    )
    assert cubin.returncode == 0, cubin.stderr
    assert "warning" not in cubin.stderr.lower(), cubin.stderr
    return re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", cubin.stderr)


def nvrtc_log(text: str, name: str, options) -> str:
    """NVRTC's log for ``text`` (compiled with ``options``); skips without CuPy's NVRTC."""
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc", exc_type=ImportError)
    try:
        nvrtc.getVersion()
    except Exception as error:  # CuPy without its NVRTC library
        pytest.skip(f"NVRTC is not loadable: {error}")
    program = nvrtc.createProgram(text, name, [], [])
    try:
        nvrtc.compileProgram(program, list(options))
        return nvrtc.getProgramLog(program).strip("\x00 \n")
    finally:
        nvrtc.destroyProgram(program)


def build_cpu_shim(folder, shim_header: str, driver: str, include_dir: str, flags=(),
                   optimise: str = "-O1"):
    """Build ``driver`` (C++ that includes ``cuda_shim.h`` and the .cu files of
    ``include_dir``) with g++ into a shared library in ``folder``, warnings refused; returns it
    loaded with ctypes."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("g++ is not installed")
    (folder / "cuda_shim.h").write_text(shim_header)
    (folder / "driver.cpp").write_text(driver)
    build = subprocess.run(
        [compiler, "-std=c++17", optimise, "-shared", "-fPIC", "-pthread", "-Wall", "-Wextra",
         "-Wno-unknown-pragmas", "-Wno-unused-function", "-I", include_dir, *flags, "-o",
         str(folder / "shim.so"), str(folder / "driver.cpp")],
        capture_output=True, text=True,
    )
    assert build.returncode == 0 and "warning" not in build.stderr, build.stderr
    return ctypes.CDLL(str(folder / "shim.so"))
