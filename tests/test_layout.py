"""The folders show the architecture: each imports only the folders below it, nothing imports ``cli``, and no module
sits loose beside ``kd_lightning/__init__.py`` (see the design's layout)."""

from __future__ import annotations

import ast
from pathlib import Path

import kd_lightning

PACKAGE = Path(kd_lightning.__file__).parent
ORDER = ["losses", "core", "files", "models", "data", "teachers", "modules", "export", "callbacks", "cli"]
"""From the bottom up: a folder may import only the folders before it in this list (and itself)."""


def imported_folders(path: Path) -> set[str]:
    """The ``kd_lightning.<folder>`` names a file imports (at any depth of the file, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "kd_lightning" and len(parts) > 1 and parts[1] in ORDER:
                found.add(parts[1])
    return found


def test_every_folder_imports_only_the_folders_below_it():
    going_up = []
    for path in PACKAGE.rglob("*.py"):
        folder = path.relative_to(PACKAGE).parts[0]
        if folder not in ORDER:
            continue
        allowed = set(ORDER[: ORDER.index(folder) + 1])
        going_up += [f"{path.relative_to(PACKAGE)} imports {name}" for name in imported_folders(path) - allowed]
    assert not going_up, going_up


def test_no_loose_module_beside_the_package_init():
    loose = sorted(path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py")
    folders = sorted(path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__")
    assert not loose, loose
    assert folders == sorted(ORDER), folders


def test_every_folder_says_what_it_owns_and_may_import():
    for folder in ORDER:
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text())) or ""
        assert doc, f"{folder}/__init__.py has no docstring"
        if folder != "cli":
            assert "May import" in doc, f"{folder}/__init__.py does not say what it may import"
