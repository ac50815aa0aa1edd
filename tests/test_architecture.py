"""The package's architecture, checked from its sources: a declared layer table, imports in one
direction only and without cycles, every module importable alone, a light ``import fastpq``, and
no private (underscore) name used across modules.

The layers, lowest first (a module may import its own layer or lower ones, never a higher one,
function-level imports included)::

    base < kernels < core < metrics < gpu < io < streaming < scale < analysis < datasets
         < models < edge

``base`` is ``fastpq.errors`` and the packaged data files; ``edge`` is the package's front door
(``fastpq/__init__.py``, ``api.py``, ``cli.py``, ``__main__.py`` and the documented re-export
modules ``breakdown.py`` and ``report.py``). A new module belongs in ``LAYER_OF_PATH`` below.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "fastpq"

# Source folder of each top-level package name: kernels/ is shipped as fastpq.kernels
# (pyproject.toml's package-dir). In a development checkout fastpq/kernels may be a symlink to
# ../kernels; it is skipped so that every file is read once, under its shipped name.
SOURCE_FOLDERS = {"fastpq": ROOT / "fastpq", "fastpq.kernels": ROOT / "kernels"}

LAYERS = ("base", "kernels", "core", "metrics", "gpu", "io", "streaming", "scale", "analysis",
          "datasets", "models", "edge")

# Source path (relative to the repository root) -> layer. A path ending in "/" declares every
# module under that folder; a file path declares one module. The longest matching entry wins.
LAYER_OF_PATH = {
    "fastpq/errors.py": "base",
    "fastpq/data/": "base",
    "kernels/": "kernels",
    "fastpq/core/": "core",
    "fastpq/metrics/": "metrics",
    "fastpq/gpu/": "gpu",
    "fastpq/io/": "io",
    "fastpq/streaming/": "streaming",
    "fastpq/scale/": "scale",
    "fastpq/analysis/": "analysis",
    "fastpq/datasets/": "datasets",
    "fastpq/models/": "models",
    "fastpq/__init__.py": "edge",
    "fastpq/__main__.py": "edge",
    "fastpq/api.py": "edge",
    "fastpq/cli.py": "edge",
    "fastpq/breakdown.py": "edge",
    "fastpq/report.py": "edge",
}

# Third-party packages that only some modules need (pyproject.toml's extras). A module whose
# import fails because one of these is not installed is skipped, with the reason.
OPTIONAL_DEPENDENCIES = ("torch", "torchvision", "cupy", "cupyx", "dask", "distributed",
                         "matplotlib", "pandas", "PIL", "imagecodecs", "tqdm")

# What ``import fastpq`` must not load: the optional dependencies, numba's CUDA target, and the
# reference and peer implementations that tests and benchmarks compare against.
NOT_LOADED_BY_IMPORT = OPTIONAL_DEPENDENCIES + (
    "numba.cuda", "panopticapi", "hotcoco", "vernier", "torchmetrics", "pycocotools")

# CPU stand-ins for the CUDA kernels (Python emulations, numba.cuda twins) are test oracles: they
# live in tests/, and a name of the package containing one of these words is one of them.
ORACLE_WORDS = ("emulat", "twin")


@dataclass(frozen=True)
class SourceModule:
    """One module of the package: its dotted name, source file and whether it is a package."""

    name: str
    path: Path
    is_package: bool

    @property
    def relative_path(self) -> str:
        return self.path.relative_to(ROOT).as_posix()

    @property
    def package(self) -> str:
        """The package a relative import of this module starts from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]

    def tree(self) -> ast.Module:
        return ast.parse(self.path.read_text(encoding="utf-8"), filename=str(self.path))


@dataclass(frozen=True)
class Import:
    """One import statement's target inside the package: the module it names and where."""

    target: str
    lineno: int
    names: tuple[str, ...]  # the names a ``from ... import`` takes from ``target``; () otherwise


def package_modules() -> dict[str, SourceModule]:
    """Every module of the package, by dotted name, found by walking the source folders."""
    modules = {}
    for package_name, folder in SOURCE_FOLDERS.items():
        for directory, subdirectories, files in os.walk(folder):
            here = Path(directory)
            subdirectories[:] = sorted(
                name for name in subdirectories
                if name != "__pycache__" and not (here / name).is_symlink()
                and (here / name) != SOURCE_FOLDERS["fastpq"] / "kernels")
            parts = here.relative_to(folder).parts
            for file_name in sorted(files):
                if not file_name.endswith(".py"):
                    continue
                stem = file_name[:-3]
                is_package = stem == "__init__"
                name = ".".join((package_name, *parts) + (() if is_package else (stem,)))
                modules[name] = SourceModule(name, here / file_name, is_package)
    return modules


MODULES = package_modules()


def layer_of(module: SourceModule) -> str | None:
    """The declared layer of ``module`` (the longest matching entry of LAYER_OF_PATH), or None."""
    path = module.relative_path
    matches = [entry for entry in LAYER_OF_PATH
               if entry == path or (entry.endswith("/") and path.startswith(entry))]
    return LAYER_OF_PATH[max(matches, key=len)] if matches else None


def is_in_package(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def is_private(name: str) -> bool:
    """An underscore name that is not a dunder (``__version__`` and ``__init__`` are public)."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def import_base(module: SourceModule | None, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` statement takes its names from."""
    if not node.level:
        return node.module or ""
    if module is None:
        return ""  # a relative import outside the package (bench/) cannot reach the package
    package_parts = module.package.split(".")
    base = ".".join(package_parts[:len(package_parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def dynamic_import_target(node: ast.Call) -> str | None:
    """The constant module name of ``importlib.import_module("...")`` or ``__import__("...")``."""
    function = node.func
    called = (function.id if isinstance(function, ast.Name)
              else function.attr if isinstance(function, ast.Attribute) else None)
    if called not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def package_imports(module: SourceModule | None, tree: ast.Module,
                    known=None) -> list[Import]:
    """Every import of a package module in ``tree``, at any depth (functions, ``try`` blocks,
    ``if TYPE_CHECKING``), relative ones resolved against ``module``; constant-string
    ``importlib.import_module`` calls count as imports. A ``from X import Y`` whose ``X.Y`` is a
    module imports ``X.Y``; otherwise it imports ``X``. ``known`` is the set of module names
    (default: the package's)."""
    known = MODULES if known is None else known
    imports = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports += [Import(alias.name, node.lineno, ()) for alias in node.names
                        if is_in_package(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            base = import_base(module, node)
            if not is_in_package(base):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in known:
                    imports.append(Import(submodule, node.lineno, ()))
                else:
                    imports.append(Import(base, node.lineno, (alias.name,)))
        elif isinstance(node, ast.Call):
            target = dynamic_import_target(node)
            if target is not None and is_in_package(target):
                imports.append(Import(target, node.lineno, ()))
    return imports


IMPORTS = {name: package_imports(module, module.tree()) for name, module in MODULES.items()}


def where(module: SourceModule, lineno: int) -> str:
    return f"{module.relative_path}:{lineno}"


# --- the layer table ---------------------------------------------------------------------------


def test_the_source_tree_is_found():
    for expected in ("fastpq", "fastpq.errors", "fastpq.kernels", "fastpq.kernels.pairs",
                     "fastpq.core", "fastpq.api"):
        assert expected in MODULES, f"{expected} not found under {ROOT}"
    assert not any(name.startswith("fastpq.kernels.kernels") for name in MODULES)


def test_every_module_has_a_layer():
    undeclared = [f"{module.relative_path} ({name})" for name, module in sorted(MODULES.items())
                  if layer_of(module) is None]
    assert not undeclared, (
        "modules without a layer: " + ", ".join(undeclared) + ". Declare each (its file, or its "
        "folder with a trailing '/') in LAYER_OF_PATH in tests/test_architecture.py; layers, "
        "lowest first: " + " < ".join(LAYERS))


def test_the_layer_table_names_real_layers_and_paths():
    assert set(LAYER_OF_PATH.values()) <= set(LAYERS), set(LAYER_OF_PATH.values()) - set(LAYERS)
    stale = [entry for entry in LAYER_OF_PATH if not (ROOT / entry).exists()]
    assert not stale, f"LAYER_OF_PATH names paths that are not in the tree: {stale}"


def test_every_module_says_what_it_holds():
    undocumented = [module.relative_path for module in MODULES.values()
                    if not (ast.get_docstring(module.tree()) or "").strip()]
    assert not undocumented, f"modules without a docstring saying what they hold: {undocumented}"


def test_every_import_names_a_module_of_the_package():
    unknown = [f"{where(MODULES[name], item.lineno)}: {name} imports {item.target}, which is no "
               f"module of the package" for name, imports in sorted(IMPORTS.items())
               for item in imports if item.target not in MODULES]
    assert not unknown, "\n".join(unknown)


def bound_names(body: list[ast.stmt]) -> tuple[set[str], bool]:
    """The names a module's top level binds (definitions, assignments, imports, also inside
    top-level ``if``/``try``/``with``/``for`` blocks), and whether it has a star import or a
    module ``__getattr__`` (then any name may exist)."""
    names, open_ended = set(), False
    for statement in body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(statement.name)
            open_ended |= statement.name == "__getattr__"
        elif isinstance(statement, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For,
                                    ast.AsyncFor, ast.With, ast.AsyncWith)):
            targets = (statement.targets if isinstance(statement, ast.Assign)
                       else [item.optional_vars for item in statement.items
                             if item.optional_vars is not None]
                       if isinstance(statement, (ast.With, ast.AsyncWith))
                       else [statement.target])
            names |= {node.id for target in targets for node in ast.walk(target)
                      if isinstance(node, ast.Name)}
        elif isinstance(statement, ast.Import):
            names |= {alias.asname or alias.name.partition(".")[0] for alias in statement.names}
        elif isinstance(statement, ast.ImportFrom):
            open_ended |= any(alias.name == "*" for alias in statement.names)
            names |= {alias.asname or alias.name for alias in statement.names}
        for block in ("body", "orelse", "finalbody", "handlers"):
            if isinstance(statement, (ast.If, ast.Try, ast.With, ast.AsyncWith, ast.For,
                                      ast.AsyncFor, ast.While, ast.ExceptHandler)) \
                    or (hasattr(ast, "TryStar") and isinstance(statement, ast.TryStar)):
                inner, inner_open = bound_names(getattr(statement, block, []))
                names |= inner
                open_ended |= inner_open
    return names, open_ended


def lost_names(shown: str, imports: list[Import]) -> list[str]:
    """The ``from x import name`` imports (of the file ``shown``) whose name x does not define
    (nor is a submodule of x), read from x's source."""
    lost = []
    for item in imports:
        if item.target not in MODULES:
            continue  # reported by the tests that every import names a module
        names, open_ended = bound_names(MODULES[item.target].tree().body)
        lost += [f"{shown}:{item.lineno}: imports {imported} from {item.target}, which defines "
                 f"no such name" for imported in item.names
                 if imported != "*" and imported not in names and not open_ended]
    return lost


def test_every_imported_name_exists():
    """A name lost in a move fails here rather than in a rarely run function."""
    lost = [message for name, imports in sorted(IMPORTS.items())
            for message in lost_names(MODULES[name].relative_path, imports)]
    assert not lost, "\n".join(lost)


def test_bound_names_reads_the_top_level_only():
    source = ("import numpy as np\nimport os.path\nfrom .pairs import pair_counts as counts\n"
              "try:\n    import imagecodecs\nexcept ImportError:\n    imagecodecs = None\n"
              "if True:\n    LIMIT, (LOW, HIGH) = 1, (2, 3)\nwith open('x') as handle:\n    pass\n"
              "def evaluate():\n    hidden = 1\nclass Result:\n    inner = 2\nCOUNT: int = 4\n")
    names, open_ended = bound_names(ast.parse(source).body)
    assert names == {"np", "os", "counts", "imagecodecs", "LIMIT", "LOW", "HIGH", "handle",
                     "evaluate", "Result", "COUNT"}
    assert not open_ended
    assert bound_names(ast.parse("from numpy import *\n").body)[1]
    assert bound_names(ast.parse("def __getattr__(name):\n    pass\n").body)[1]


def test_modules_import_only_their_own_or_lower_layers():
    rank = {layer: position for position, layer in enumerate(LAYERS)}
    upward = []
    for name, imports in sorted(IMPORTS.items()):
        module = MODULES[name]
        layer = layer_of(module)
        for item in imports:
            if item.target not in MODULES:
                continue  # reported by test_every_import_names_a_module_of_the_package
            target_layer = layer_of(MODULES[item.target])
            if layer is None or target_layer is None:
                continue  # reported by test_every_module_has_a_layer
            if rank[target_layer] > rank[layer]:
                upward.append(f"{where(module, item.lineno)}: {name} ({layer}) imports "
                              f"{item.target} ({target_layer})")
    assert not upward, ("imports from a higher layer (" + " < ".join(LAYERS) + "):\n"
                        + "\n".join(upward))


def import_graph() -> dict[str, dict[str, int]]:
    """Module -> {imported module: line of its first import}, within the package."""
    graph = {name: {} for name in MODULES}
    for name, imports in IMPORTS.items():
        for item in imports:
            if item.target in MODULES and item.target != name:
                graph[name].setdefault(item.target, item.lineno)
    return graph


def strongly_connected_components(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm: the sets of modules that reach each other through imports."""
    index, lowlink, on_stack, stack, components = {}, {}, set(), [], []

    def visit(node):
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                lowlink[node] = min(lowlink[node], lowlink[successor])
            elif successor in on_stack:
                lowlink[node] = min(lowlink[node], index[successor])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def cycle_through(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """One import cycle inside a strongly connected component, as a closed path of modules."""
    members = set(component)
    start = component[0]
    path, seen = [start], {start}
    while True:
        successor = next(node for node in sorted(graph[path[-1]]) if node in members)
        if successor in seen:
            return path[path.index(successor):] + [successor]
        path.append(successor)
        seen.add(successor)


def test_the_import_graph_has_no_cycles():
    graph = import_graph()
    cycles = []
    for component in strongly_connected_components(graph):
        if len(component) < 2:
            continue
        cycle = cycle_through(graph, component)
        steps = [f"{source} ({where(MODULES[source], graph[source][target])}) -> {target}"
                 for source, target in zip(cycle, cycle[1:])]
        cycles.append(f"modules {component} import each other: " + "; ".join(steps))
    assert not cycles, "\n".join(cycles)


def test_the_checks_see_function_level_and_relative_imports(tmp_path):
    source = ("from . import pairs\nfrom .tables import segment_rows\n"
              "def later():\n    from fastpq.io import coco\n    import fastpq.api\n"
              "    importlib.import_module('fastpq.errors')\n")
    module = SourceModule("fastpq.kernels.png", tmp_path / "png.py", False)
    known = {"fastpq", "fastpq.errors", "fastpq.api", "fastpq.io", "fastpq.io.coco",
             "fastpq.kernels", "fastpq.kernels.pairs", "fastpq.kernels.tables",
             "fastpq.kernels.png"}
    found = {(item.target, item.names)
             for item in package_imports(module, ast.parse(source), known)}
    assert found == {("fastpq.kernels.pairs", ()), ("fastpq.kernels.tables", ("segment_rows",)),
                     ("fastpq.io.coco", ()), ("fastpq.api", ()), ("fastpq.errors", ())}
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    components = strongly_connected_components(graph)
    assert sorted(components) == [["a", "b", "c"], ["d"]]
    assert cycle_through(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


# --- importing -----------------------------------------------------------------------------------

# Runs in a fresh interpreter. It loads numpy and numba (the package's two dependencies) once, then
# imports each module in a forked child whose sys.modules holds no module of the package (given one
# module, it imports it in place). torch and torchvision, when installed, are loaded before the
# forks too: only the package's modules need to be absent. ``__main__`` is run with ``--help``. The
# package's own __init__ is not run first: the child registers the package from its import spec
# unexecuted, so a module is imported with exactly what it imports itself ("fastpq" itself is
# imported normally). Each child reports which package modules its import loaded.
IMPORT_ALONE = r"""
import importlib, importlib.util, json, os, sys, traceback
import numba, numpy

package, modules, optional = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
missing_optional = {name for name in optional if importlib.util.find_spec(name) is None}
for heavy in ("torch", "torchvision"):  # loaded once here rather than once per module using them
    if heavy not in missing_optional:
        importlib.import_module(heavy)


def missing_dependency(error):
    while error is not None:
        top_level = (getattr(error, "name", None) or "").split(".")[0]
        if isinstance(error, ModuleNotFoundError) and top_level in missing_optional:
            return top_level
        error = error.__cause__ or error.__context__
    return None


def import_alone(name):
    if name != package:
        spec = importlib.util.find_spec(package)
        sys.modules[package] = importlib.util.module_from_spec(spec)
    if name.endswith(".__main__"):  # running it is importing it: "python -m fastpq --help"
        sys.argv = [package, "--help"]
    try:
        try:
            importlib.import_module(name)
        except SystemExit as exit_request:
            if exit_request.code not in (0, None):
                raise
    except BaseException as error:
        dependency = missing_dependency(error)
        if dependency is not None:
            return {"status": "skipped", "detail": f"needs {dependency}, which is not installed"}
        return {"status": "failed", "detail": traceback.format_exc()}
    loaded = sorted(m for m in sys.modules if m == package or m.startswith(package + "."))
    return {"status": "imported", "loaded": loaded}


results = {}
for name in modules:
    if len(modules) == 1:  # this interpreter is fresh: import right here
        results[name] = import_alone(name)
        continue
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        try:
            outcome = import_alone(name)
        except BaseException:
            outcome = {"status": "failed", "detail": traceback.format_exc()}
        with os.fdopen(write_end, "w") as channel:
            json.dump(outcome, channel)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as channel:
        report = channel.read()
    _, exit_status = os.waitpid(child, 0)
    results[name] = json.loads(report) if report else {
        "status": "failed", "detail": f"the child importing {name} died (status {exit_status})"}
print(json.dumps(results))
"""


def run_import_alone(names: list[str]) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", IMPORT_ALONE, PACKAGE, json.dumps(names),
         json.dumps(OPTIONAL_DEPENDENCIES)],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def alone_imports():
    """Outcome of importing each package module alone, by module name: one interpreter that
    forks a child per module where the platform can fork, else one interpreter per module."""
    if hasattr(os, "fork"):
        return run_import_alone(sorted(MODULES))
    outcomes = {}
    for name in sorted(MODULES):
        outcomes.update(run_import_alone([name]))
    return outcomes


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports_alone_in_a_fresh_interpreter(alone_imports, name):
    outcome = alone_imports[name]
    if outcome["status"] == "skipped":
        pytest.skip(f"{name} {outcome['detail']}")
    assert outcome["status"] == "imported", f"{name} cannot be imported alone:\n{outcome['detail']}"


def test_importing_a_module_loads_no_higher_layer(alone_imports):
    rank = {layer: position for position, layer in enumerate(LAYERS)}
    upward = []
    for name, outcome in sorted(alone_imports.items()):
        if outcome["status"] != "imported" or name == PACKAGE:
            continue
        layer = layer_of(MODULES[name])
        if layer is None:
            continue  # reported by test_every_module_has_a_layer
        higher = [loaded for loaded in outcome["loaded"] if loaded != PACKAGE and loaded in MODULES
                  and rank.get(layer_of(MODULES[loaded]), -1) > rank[layer]]
        if higher:
            upward.append(f"importing {name} ({layer}) loads {', '.join(higher)}")
    assert not upward, "\n".join(upward)


def test_import_fastpq_loads_no_optional_dependency_and_no_oracle():
    code = (
        "import json, sys, fastpq\n"
        "modules = {name: getattr(module, '__file__', None)\n"
        "           for name, module in list(sys.modules.items())}\n"
        "defined = {name: sorted(attribute for attribute, value in vars(module).items()\n"
        "                        if getattr(value, '__module__', None) == name)\n"
        "           for name, module in list(sys.modules.items())\n"
        "           if name == 'fastpq' or name.startswith('fastpq.')}\n"
        "print(json.dumps({'modules': modules, 'defined': defined}))\n")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               cwd=ROOT, check=True)
    loaded = json.loads(completed.stdout)
    heavy = sorted(name for name in loaded["modules"]
                   if any(name == banned or name.startswith(banned + ".")
                          for banned in NOT_LOADED_BY_IMPORT))
    assert not heavy, f"import fastpq loads {heavy}"
    tests_folder = str(ROOT / "tests")
    from_tests = sorted(name for name, path in loaded["modules"].items()
                        if name == "tests" or name.startswith("tests.")
                        or (path and os.path.abspath(path).startswith(tests_folder + os.sep)))
    assert not from_tests, f"import fastpq loads modules of tests/: {from_tests}"
    oracles = sorted(f"{module}.{name}" for module, names in loaded["defined"].items()
                     for name in names if any(word in name.lower() for word in ORACLE_WORDS))
    assert not oracles, (f"import fastpq loads CPU stand-ins of the CUDA kernels {oracles}; "
                         f"test oracles belong in tests/")
    assert "fastpq.kernels.pairs" in loaded["modules"]  # the inspection saw the package


# --- private names -------------------------------------------------------------------------------


def module_bindings(module: SourceModule | None, tree: ast.Module, known) -> dict[str, str]:
    """Local name -> package module it refers to, from every import in ``tree`` (``known``: the
    module names)."""
    bindings = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_in_package(alias.name):
                    if alias.asname:
                        bindings[alias.asname] = alias.name
                    else:
                        bindings[alias.name.partition(".")[0]] = PACKAGE
        elif isinstance(node, ast.ImportFrom):
            base = import_base(module, node)
            for alias in node.names:
                if is_in_package(base) and f"{base}.{alias.name}" in known:
                    bindings[alias.asname or alias.name] = f"{base}.{alias.name}"
    return bindings


def attribute_chain(node: ast.Attribute) -> list[str] | None:
    """``a.b.c`` as ["a", "b", "c"]; None when the chain does not start at a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id] + parts[::-1]


def private_uses(module: SourceModule | None, tree: ast.Module, path: Path,
                 known=None) -> list[str]:
    """Every private name of another package module that ``tree`` (the source at ``path``)
    imports or reads: ``from x import _name``, ``import x._private``, ``x._name`` and
    ``getattr(x, "_name")`` where ``x`` is a package module the file imported. ``module`` is the
    package module ``tree`` is (None outside the package); ``known`` the module names (default:
    the package's)."""
    known = MODULES if known is None else known
    own_name = module.name if module is not None else None
    shown = path.relative_to(ROOT).as_posix()
    found = set()
    for item in package_imports(module, tree, known):
        hidden = [part for part in item.target.split(".") if is_private(part)]
        if hidden and item.target != own_name:
            found.add((item.lineno, f"imports the private module {item.target}"))
        for name in item.names:
            if is_private(name) and item.target != own_name:
                found.add((item.lineno, f"imports {name} from {item.target}"))
    bindings = module_bindings(module, tree, known)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = attribute_chain(node)
            names = chain[1:] if chain else []
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "getattr" and len(node.args) >= 2
              and isinstance(node.args[0], ast.Name) and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str)):
            chain, names = [node.args[0].id], [node.args[1].value]
        else:
            continue
        if not chain or chain[0] not in bindings:
            continue
        target = bindings[chain[0]]
        for name in names:
            if f"{target}.{name}" in known:
                target = f"{target}.{name}"
                continue
            if is_private(name) and target != own_name:
                found.add((node.lineno, f"reads {target}.{name}"))
            break
    return [f"{shown}:{lineno}: {what}" for lineno, what in sorted(found)]


def test_no_private_name_is_used_across_modules():
    uses = [use for module in MODULES.values() for use in private_uses(module, module.tree(),
                                                                       module.path)]
    assert not uses, ("private names used across modules (make the name public, or move the "
                      "code to the module that owns it):\n" + "\n".join(uses))


def bench_files() -> list[Path]:
    return sorted((ROOT / "bench").glob("*.py"))


def test_bench_uses_only_public_names_of_fastpq():
    assert bench_files(), "bench/ has no Python files"
    uses = []
    for path in bench_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        uses += private_uses(None, tree, path)
        uses += lost_names(path.relative_to(ROOT).as_posix(), package_imports(None, tree))
        uses += [f"{path.relative_to(ROOT).as_posix()}:{item.lineno}: imports {item.target}, which "
                 f"is no module of fastpq" for item in package_imports(None, tree)
                 if item.target not in MODULES]
    assert not uses, ("bench/ uses private names of fastpq, or names it lacks:\n"
                      + "\n".join(uses))


def test_the_private_name_check_sees_each_form():
    source = ("import fastpq.io.coco\nfrom fastpq.io import coco as files\n"
              "from fastpq.kernels.pairs import _EMPTY, pair_counts\nfrom . import tables\n"
              "def f():\n    fastpq.io.coco._read(1)\n    files._bounded_map\n"
              "    getattr(tables, '_lookup')\n    tables.public\n    self._own\n"
              "    files.__name__\n")
    path = ROOT / "kernels" / "example.py"
    module = SourceModule("fastpq.kernels.example", path, False)
    known = {"fastpq", "fastpq.io", "fastpq.io.coco", "fastpq.kernels", "fastpq.kernels.pairs",
             "fastpq.kernels.tables", "fastpq.kernels.example"}
    uses = private_uses(module, ast.parse(source), path, known)
    assert uses == ["kernels/example.py:3: imports _EMPTY from fastpq.kernels.pairs",
                    "kernels/example.py:6: reads fastpq.io.coco._read",
                    "kernels/example.py:7: reads fastpq.io.coco._bounded_map",
                    "kernels/example.py:8: reads fastpq.kernels.tables._lookup"]
