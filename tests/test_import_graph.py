"""The import rules docs/design.md states, as tests.

- the offline packages stay untangled: `training` and `defense_eval` share `backdoor` and never
  import each other;
- `upstream` is httpx only: no torch, no FastAPI (nor Starlette, which FastAPI is built on);
- `purify` is pure tensor code: no web framework, no HTTP client;
- `api` is imported by nothing below it: only `ui` (beside it) and the entry points (`cli`,
  `cli_models`, `demo`) import it. What config and the packages below need of the HTTP side (the path
  rules in `http_paths`, the server's settings in `server_settings`) sits below it, in leaves.

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


def module_files(name: str) -> list[Path]:
    """The source files of `service.<name>`, a package (every file under it) or a single module."""
    package = SERVICE / name
    return sorted(package.rglob("*.py")) if package.is_dir() else [SERVICE / f"{name}.py"]


def package_imports(package: str) -> dict[str, set[str]]:
    """Module file (relative to service/) → the service modules it imports, for one package."""
    return {
        str(path.relative_to(SERVICE)): {m for m in imported_modules(path) if m.startswith("service.")}
        for path in module_files(package)
    }


def third_party_importers(package: str, roots: set[str]) -> dict[str, set[str]]:
    """The modules of `service.<package>` that import any of the top-level packages `roots`, with what they import."""
    found = {
        str(path.relative_to(SERVICE)): {m for m in imported_modules(path) if m.split(".")[0] in roots}
        for path in module_files(package)
    }
    return {module: imports for module, imports in found.items() if imports}


# The parts of service/ that `api` builds on (its layers below) and those built on it. Every
# top-level module and package is in exactly one, so a new one has to be placed.
ABOVE_API = frozenset({"api", "ui", "cli", "cli_models", "demo"})  # api itself, ui beside it, the entry points
BELOW_API = frozenset(
    {
        "config", "config_file", "config_sources", "server_settings", "http_paths", "paths", "cpus", "errors",
        "metrics", "signals", "loopback", "torch_threads", "purify", "workers", "upstream", "shadow", "backdoor",
        "training", "defense_eval",
    }
)  # fmt: skip


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


def test_every_part_of_service_is_placed_above_or_below_the_api() -> None:
    parts = {path.stem for path in SERVICE.glob("*.py")} | {path.parent.name for path in SERVICE.glob("*/__init__.py")}
    assert parts - {"__init__"} == ABOVE_API | BELOW_API and not ABOVE_API & BELOW_API


@pytest.mark.parametrize("part", sorted(BELOW_API))
def test_nothing_below_the_api_imports_it(part: str) -> None:
    assert importers_of("api", part) == {}


@pytest.mark.parametrize("module", ["http_paths", "server_settings"])
def test_the_api_side_leaves_import_nothing_from_service(module: str) -> None:
    # The HTTP surface's path rules and the server's settings sit below `api` so that config and the
    # packages may use them: leaves, so they cannot bring `api` (or torch) in with them.
    assert package_imports(module) == {f"{module}.py": set()}
    assert third_party_importers(module, {"torch", "fastapi", "starlette"}) == {}


def test_upstream_imports_neither_torch_nor_fastapi() -> None:
    assert third_party_importers("upstream", {"torch", "fastapi", "starlette"}) == {}


def test_purify_imports_no_web_framework() -> None:
    assert third_party_importers("purify", {"fastapi", "starlette", "uvicorn", "httpx", "jinja2"}) == {}


def test_the_import_checks_see_imports_that_exist() -> None:
    # Not vacuous: the same helpers find the imports that are allowed.
    assert third_party_importers("purify", {"torch"}) and third_party_importers("api", {"fastapi"})
    assert importers_of("api", "ui") and importers_of("api", "cli")
