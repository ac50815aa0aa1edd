"""The wheel ships every subpackage (kernels/ is mapped to fastpq.kernels) and its data files."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_kernels_models_and_data(tmp_path):
    pytest.importorskip("build")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("fastpq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("fastpq/__init__.py", "fastpq/kernels/__init__.py", "fastpq/kernels/pairs.py",
                     "fastpq/kernels/png.py", "fastpq/models/__init__.py",
                     "fastpq/data/coco_panoptic_categories.json"):
        assert required in names, required
    for source in ("pairs.cu", "accumulate.cu"):
        if (ROOT / "kernels" / source).exists():
            assert f"fastpq/kernels/{source}" in names


def test_import_needs_only_numpy_and_numba():
    code = ("import sys, fastpq; heavy = {'torch', 'cupy', 'torchvision', 'dask', 'distributed', "
            "'PIL', 'imagecodecs', 'matplotlib', 'pandas'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
