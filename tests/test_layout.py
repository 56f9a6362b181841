"""The package layout holds: packages import only from packages before them, files stay small,
module names do not differ by a suffix, every package says what it holds."""

import ast
import os
import re

import pytest
from conftest import REPO

PACKAGE = os.path.join(REPO, "tfqat")
# Pipeline order, bottom-up: a package may import the ones before it (and tfqat's top-level
# modules: tf_compat, fileio). The CLIs (`__main__.py`) are entry points above all of them.
ORDER = [
    "data",
    "models",
    "losses",
    "postprocess",
    "runtime",
    "tasks",
    "optimize",
    "train",
    "export",
    "evaluate",
    "recipe",
]
MAX_LINES = 400
SUFFIXES = ("ing", "ion", "_runtime", "_runner", "s")


def modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, PACKAGE), path


def imported_tfqat_modules(path):
    """Every `tfqat.x.y` a file imports, at module level or inside functions."""
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("tfqat"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tfqat"):
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def package_of(relpath_or_module):
    parts = re.split(r"[./]", relpath_or_module)
    parts = parts[1:] if parts[0] == "tfqat" else parts
    return parts[0] if parts and parts[0] in ORDER else None


def test_packages_import_only_packages_before_them():
    wrong = []
    for relpath, path in modules():
        own = package_of(relpath)
        if own is None or relpath.endswith("__main__.py"):
            continue
        for module in imported_tfqat_modules(path):
            other = package_of(module)
            if other and ORDER.index(other) > ORDER.index(own):
                wrong.append(f"{relpath} imports {module}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_runtime_imports_nothing_from_export():
    for relpath, path in modules():
        if package_of(relpath) == "runtime":
            assert not [m for m in imported_tfqat_modules(path) if m.startswith("tfqat.export")]


@pytest.mark.parametrize("relpath,path", list(modules()))
def test_files_stay_under_the_line_limit(relpath, path):
    with open(path) as f:
        assert sum(1 for _ in f) <= MAX_LINES, relpath


def test_no_two_modules_differ_only_by_a_suffix():
    stems = {}
    for relpath, _ in modules():
        stem = os.path.splitext(os.path.basename(relpath))[0]
        if stem.startswith("__"):
            continue
        base = next((stem[: -len(s)] for s in SUFFIXES if stem.endswith(s)), stem)
        stems.setdefault(base.rstrip("_e"), set()).add(relpath)
    clashes = {k: v for k, v in stems.items() if len({os.path.basename(p) for p in v}) > 1}
    assert not clashes, clashes


def test_every_package_says_what_it_holds():
    for folder, _, files in os.walk(PACKAGE):
        if "__init__.py" in files and "__pycache__" not in folder:
            tree = ast.parse(open(os.path.join(folder, "__init__.py")).read())
            assert ast.get_docstring(tree), os.path.relpath(folder, REPO)
