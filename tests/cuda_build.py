"""Compiling the CUDA sources in tests without a GPU: nvcc (cubin, with ptxas' resource report)
and NVRTC through CuPy. Each helper asserts a clean build and skips where the tool is missing."""

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
