"""The import rule between layers (README, Architecture): the contracts at the bottom, then the rest
of ``shared`` (runtime, stores, backends, ML pieces), then the services, then the operator's
application (``vlf``) and the dev and test kit (``devkit``). Nothing imports upward and no service
imports another; a change that breaks the rule fails here, naming the import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ABOVE_THE_SERVICES = ("vlf", "devkit")
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
def test_no_service_imports_another_or_anything_above_the_services(module: str) -> None:
    service = ".".join(module.split(".")[:2])
    imported = _imports(module)
    others = {name for name in imported if _within(name, ("services",)) and not _within(name, (service,))}
    upward = {name for name in imported if _within(name, ABOVE_THE_SERVICES)}
    assert not others, f"{module} imports another service: {sorted(others)}"
    assert not upward, f"{module} imports the application or the dev kit: {sorted(upward)}"


@pytest.mark.parametrize("module", _modules("shared"))
def test_the_shared_library_imports_nothing_above_it(module: str) -> None:
    upward = {name for name in _imports(module) if _within(name, ("services", *ABOVE_THE_SERVICES))}
    assert not upward, f"{module} (below the services) imports {sorted(upward)}"


@pytest.mark.parametrize("module", _modules("shared/contracts"))
def test_the_contracts_import_only_pydantic_and_themselves(module: str) -> None:
    ours = {name for name in _imports(module) if _within(name, ("shared", "services", "pydantic"))}
    assert all(_within(name, CONTRACTS_MAY_IMPORT) for name in ours), f"{module} imports {sorted(ours)}"
