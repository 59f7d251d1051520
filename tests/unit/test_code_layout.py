"""The code's shape, as the style guide states it, checked on the source itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("features", "streams", "serving", "streamrec")
MAX_FUNCTION_LINES = 80


def modules(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_no_function_is_longer_than_the_guide_allows() -> None:
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({size} lines)"
        for path in modules(*PACKAGES)
        for node in ast.walk(parsed(path))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (size := (node.end_lineno or node.lineno) - node.lineno + 1) > MAX_FUNCTION_LINES
    ]
    assert not long, long


def test_no_underscored_name_is_imported_from_another_module() -> None:
    private = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}"
        for path in modules(*PACKAGES, "tests")
        for node in ast.walk(parsed(path))
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert not private, private


@pytest.mark.parametrize(
    "path",
    [ROOT / "serving" / "health.py", *modules("serving/dashboard"), *modules("serving/routes")],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_health_the_dashboard_and_the_routes_read_live_state_through_the_live_reader(
    path: Path,
) -> None:
    direct = [
        f"line {node.lineno}"
        for node in ast.walk(parsed(path))
        if isinstance(node, ast.Attribute) and node.attr == "store"
    ]
    assert not direct, f"{path.name} reads the store directly at {direct}"


#: streams/'s layers, lowest first: a module may import its own layer and the ones below.
STREAMS_LAYERS = ("streams", "streams.io", "streams.worker", "streams.data")


def layer_of(module: str) -> int:
    parts = module.split(".")
    return STREAMS_LAYERS.index(".".join(parts[:2])) if len(parts) > 2 else 0


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.extend((node.lineno, f"{node.module}.{a.name}") for a in node.names)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
    return found


def test_streams_imports_flow_from_data_to_worker_to_io_to_the_top() -> None:
    upward = []
    for path in modules("streams"):
        here = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for line, name in imported_modules(path):
            target = name if name.startswith("streams.") else ""
            if target and target.split(".")[1] in {"io", "worker", "data"}:
                if layer_of(target) > layer_of(here):
                    upward.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not upward, upward


def test_the_top_of_streams_holds_only_what_every_layer_shares() -> None:
    top = sorted(p.name for p in (ROOT / "streams").glob("*.py"))
    assert top == ["__init__.py", "item_vectors.py", "schema.py", "settings.py"]
