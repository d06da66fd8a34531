"""The package's layering: plain PyTorch in core, then data and evaluation, then methods, then the commands.
No library module imports a command module or a room above its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "dyntok"
COMMANDS = {"run", "api", "bench", "compare", "report", "export"}
# what each room may import from dyntok (besides itself and the shared errors / options modules)
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "evaluation": {"core", "data"},
    "methods": {"core", "data", "evaluation"},
}


def _dyntok_imports(path: Path) -> set[str]:
    """The dyntok modules ``path`` imports (``dyntok.a.b`` as ``a``), anywhere in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "dyntok" and len(parts) > 1:
                out.add(parts[1])
    return out


LIBRARY = sorted(p for p in PKG.rglob("*.py") if p.relative_to(PKG).parts[0] in ALLOWED)


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PKG)))
def test_library_modules_import_no_command_and_no_room_above_their_own(path):
    room = path.relative_to(PKG).parts[0]
    imported = _dyntok_imports(path)
    assert not imported & COMMANDS, f"{path} imports a command: {imported & COMMANDS}"
    rooms = imported & set(ALLOWED)
    assert rooms <= ALLOWED[room] | {room}, f"{path} ({room}) imports {rooms - ALLOWED[room] - {room}}"


def test_the_package_entry_point_imports_no_command():
    assert not _dyntok_imports(PKG / "__init__.py") & COMMANDS
