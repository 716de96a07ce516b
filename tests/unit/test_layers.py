"""The import rule between layers (README, Layout): contracts at the bottom, then the library the
services share, then the services, then the operator's application. Nothing imports upward and no
service imports another; a change that breaks the rule fails here with the offending import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The operator's application (CLI, demo, report): above the services, so it may import them.
APPLICATION = ("shared.cli", "shared.report", "shared.demo", "shared.demo_data")
# What the contracts may use besides the standard library: they are the bottom layer.
CONTRACTS_MAY_IMPORT = ("pydantic", "shared.contracts", "shared.errors")


def _modules(package: str) -> list[str]:
    root = REPO / package
    return sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for path in root.rglob("*.py")
    )


def _imports(module: str) -> set[str]:
    """Every module ``module`` imports, at the top or inside a function (lazy imports count too)."""
    path = REPO / Path(*module.split("."))
    source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("module", _modules("services"))
def test_no_service_imports_another(module: str) -> None:
    service = ".".join(module.split(".")[:2])
    others = {
        name for name in _imports(module) if name.startswith("services.") and not _within(name, (service,))
    }
    assert not others, f"{module} imports another service: {sorted(others)}"


@pytest.mark.parametrize("module", [m for m in _modules("shared") if not _within(m, APPLICATION)])
def test_the_shared_library_imports_no_service(module: str) -> None:
    upward = {name for name in _imports(module) if _within(name, ("services",))}
    assert not upward, f"{module} (below the services) imports {sorted(upward)}"


@pytest.mark.parametrize("module", _modules("shared/contracts"))
def test_the_contracts_import_only_pydantic_and_themselves(module: str) -> None:
    ours = {name for name in _imports(module) if _within(name, ("shared", "services", "pydantic"))}
    assert all(_within(name, CONTRACTS_MAY_IMPORT) for name in ours), f"{module} imports {sorted(ours)}"
