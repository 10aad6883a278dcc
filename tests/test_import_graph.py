"""The offline packages stay untangled: `training` and `defense_eval` share `backdoor` and never import each other.

Read from the source with `ast` (every import, also those inside functions and TYPE_CHECKING
blocks), so the test sees what the code says, not what happened to be imported first.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[1] / "service"


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, absolute names (the repo uses no relative imports)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; use service.… names"
            modules.add(node.module or "")
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def package_imports(package: str) -> dict[str, set[str]]:
    """Module file (relative to service/) → the service modules it imports, for one package."""
    return {
        str(path.relative_to(SERVICE)): {m for m in imported_modules(path) if m.startswith("service.")}
        for path in sorted((SERVICE / package).rglob("*.py"))
    }


def importers_of(package: str, importer: str) -> dict[str, set[str]]:
    """The modules of `importer` that import anything from `service.<package>`, with what they import."""
    prefix = f"service.{package}"
    found = {
        module: {m for m in imports if m == prefix or m.startswith(prefix + ".")}
        for module, imports in package_imports(importer).items()
    }
    return {module: imports for module, imports in found.items() if imports}


def test_imported_modules_sees_every_kind_of_import(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        "import service.a\nfrom service.b import c\n"
        "def f():\n    from service.d import e\n"
        "if TYPE_CHECKING:\n    import service.g as h\n"
    )
    assert {"service.a", "service.b", "service.b.c", "service.d", "service.d.e", "service.g"} <= imported_modules(
        source
    )


@pytest.mark.parametrize(("importer", "package"), [("training", "defense_eval"), ("defense_eval", "training")])
def test_training_and_defense_eval_do_not_import_each_other(importer: str, package: str) -> None:
    assert importers_of(package, importer) == {}


@pytest.mark.parametrize("package", ["training", "defense_eval", "api", "workers", "demo", "cli"])
def test_backdoor_is_a_leaf_of_the_offline_side(package: str) -> None:
    assert importers_of(package, "backdoor") == {}


def test_both_sides_use_the_shared_backdoor_package() -> None:
    assert importers_of("backdoor", "training") and importers_of("backdoor", "defense_eval")
