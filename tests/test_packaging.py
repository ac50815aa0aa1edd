"""The wheel ships every subpackage, module and data file of the source tree (kernels/ is mapped to
fastpq.kernels), and pyproject.toml's explicit package list matches the tree.

The list is explicit because setuptools' automatic discovery does not follow the
``fastpq.kernels`` -> ``kernels/`` mapping and silently leaves the kernels out of the wheel; these
tests make a subpackage missing from the list, or a file missing from the wheel, a failure.
"""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="pyproject.toml on Python 3.10 needs tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "fastpq"
BUILD_LEFTOVERS = ("__pycache__", ".pytest_cache", ".hypothesis")


def setuptools_config() -> dict:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return pyproject["tool"]["setuptools"]


def mapped_folders() -> dict[str, Path]:
    """Package name -> its source folder: ``fastpq`` -> fastpq/ plus pyproject's package-dir."""
    folders = {PACKAGE: ROOT / PACKAGE}
    folders.update({name: ROOT / folder
                    for name, folder in setuptools_config().get("package-dir", {}).items()})
    return folders


def is_shipped_folder(folder: Path) -> bool:
    """A real folder of sources: not a symlink (a development checkout may link fastpq/kernels to
    ../kernels, absent from a clean clone) and not a cache."""
    return not folder.is_symlink() and folder.name not in BUILD_LEFTOVERS \
        and not folder.name.endswith(".egg-info")


def source_packages() -> dict[str, Path]:
    """Every package of the source tree, by dotted name -> folder: each folder with an
    ``__init__.py`` under fastpq/ and under every package-dir mapping (fastpq.kernels ->
    kernels/). A folder that package-dir maps elsewhere is reached only through its mapping."""
    folders = mapped_folders()
    packages = {}
    for root_name, root in folders.items():
        for directory, subdirectories, _ in os.walk(root):
            here = Path(directory)
            name = ".".join((root_name, *here.relative_to(root).parts))
            subdirectories[:] = sorted(
                sub for sub in subdirectories
                if is_shipped_folder(here / sub) and f"{name}.{sub}" not in folders)
            if (here / "__init__.py").is_file():
                packages[name] = here
    return packages


def shipped_sources() -> dict[str, Path]:
    """Path inside the wheel -> source file, for every file of every package (modules, .cu
    sources, JSON tables): all of it ships."""
    files = {}
    for name, folder in source_packages().items():
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix not in (".pyc", ".pyo"):
                files["/".join(name.split(".") + [path.name])] = path
    return files


def test_the_source_tree_is_read_under_its_shipped_names():
    packages = source_packages()
    assert packages["fastpq.kernels"] == ROOT / "kernels"
    assert "fastpq.kernels.kernels" not in packages and "kernels" not in packages
    sources = shipped_sources()
    for required in ("fastpq/__init__.py", "fastpq/kernels/pairs.py", "fastpq/kernels/pairs.cu",
                     "fastpq/data/coco_panoptic_categories.json"):
        assert required in sources, required


def test_kernels_are_mapped_to_fastpq_kernels():
    assert setuptools_config()["package-dir"] == {"fastpq.kernels": "kernels"}


def test_the_package_list_matches_the_source_tree():
    listed = setuptools_config()["packages"]
    assert len(listed) == len(set(listed)), f"packages listed twice in pyproject.toml: {listed}"
    in_tree = set(source_packages())
    missing, stale = sorted(in_tree - set(listed)), sorted(set(listed) - in_tree)
    assert not missing, (f"subpackages not in pyproject.toml's [tool.setuptools] packages, so not "
                         f"in the wheel: {missing}")
    assert not stale, f"pyproject.toml lists packages that are not in the tree: {stale}"


def test_every_folder_of_modules_is_a_package():
    """A folder of .py files without __init__.py is a namespace package: the explicit package
    list would leave it out of the wheel."""
    namespace = []
    for root in mapped_folders().values():
        for directory, subdirectories, files in os.walk(root):
            here = Path(directory)
            subdirectories[:] = [sub for sub in subdirectories if is_shipped_folder(here / sub)]
            if any(name.endswith(".py") for name in files) and "__init__.py" not in files:
                namespace.append(here.relative_to(ROOT).as_posix())
    assert not namespace, f"folders of modules without an __init__.py: {namespace}"


def test_every_data_file_is_declared_as_package_data():
    """Every non-Python file of a package matches a package-data pattern (else setuptools drops
    it); the wheel test below checks the same on the built wheel."""
    patterns = setuptools_config().get("package-data", {})
    undeclared = []
    for name, folder in source_packages().items():
        for path in folder.iterdir():
            if path.is_file() and path.suffix not in (".py", ".pyc", ".pyo") \
                    and not any(path.match(pattern) for pattern in patterns.get(name, ())):
                undeclared.append(path.relative_to(ROOT).as_posix())
    assert not undeclared, f"files no [tool.setuptools.package-data] pattern ships: {undeclared}"


def copy_sources(destination: Path) -> Path:
    """What a clean clone holds for the build: pyproject.toml, README.md, any LICENSE file and
    the package folders, without symlinks and caches."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, destination / name)
    for license_file in ROOT.glob("LICEN[CS]E*"):
        shutil.copy2(license_file, destination / license_file.name)

    def leave_out(directory, names):
        return [name for name in names
                if (Path(directory) / name).is_symlink() or name in BUILD_LEFTOVERS
                or name.endswith((".pyc", ".pyo", ".egg-info"))]

    for folder in mapped_folders().values():
        relative = folder.relative_to(ROOT)
        shutil.copytree(folder, destination / relative, ignore=leave_out)
    return destination


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """A wheel built (``python -m build``) from a copy of the sources."""
    pytest.importorskip("build", reason="building the wheel needs build (pip install fastpq[test])")
    sources = copy_sources(tmp_path_factory.mktemp("clean_clone"))
    out = tmp_path_factory.mktemp("dist")
    completed = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out),
         str(sources)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    (path,) = out.glob("fastpq-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_data_file(wheel):
    shipped = {name for name in wheel.namelist() if name.startswith(PACKAGE + "/")}
    for required in ("fastpq/__init__.py", "fastpq/kernels/__init__.py", "fastpq/kernels/pairs.py",
                     "fastpq/kernels/png.py", "fastpq/kernels/pairs.cu",
                     "fastpq/kernels/accumulate.cu", "fastpq/models/__init__.py",
                     "fastpq/data/coco_panoptic_categories.json"):
        assert required in shipped, required
    expected = set(shipped_sources())
    missing, extra = sorted(expected - shipped), sorted(shipped - expected)
    assert not missing, f"source files missing from the wheel: {missing}"
    assert not extra, f"files in the wheel that are not in the source tree: {extra}"
    cuda_sources = {f"fastpq/kernels/{path.name}" for path in (ROOT / "kernels").glob("*.cu")}
    assert cuda_sources and cuda_sources <= shipped


@pytest.mark.slow
def test_the_wheel_installs_only_the_package_and_the_console_script(wheel):
    names = wheel.namelist()
    outside = sorted(name for name in names if not name.startswith(PACKAGE + "/")
                     and not name.split("/")[0].endswith(".dist-info"))
    assert not outside, f"the wheel installs files outside fastpq/ (top-level kernels?): {outside}"
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    assert "fastpq = fastpq.cli:main" in wheel.read(entry_points).decode()
