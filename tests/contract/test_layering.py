"""Layering: the framework-free core imports no web framework, and SQL templating imports
nothing of the servers.

The core is ``shared`` outside ``shared/web/``, ``sql_templating``, the API server's services and
the data server's engine. Read from the source with ``ast`` (nothing is imported or run), and
followed through the repository's own modules, so a service that imports a helper that imports
Starlette is caught as surely as one that imports Starlette itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OWN_PACKAGES = ("api_server", "data_server", "shared", "sql_templating")
WEB_FRAMEWORKS = ("starlette", "uvicorn", "h11", "httptools")
SERVERS = ("api_server", "data_server")


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_under(root: Path, folder: str) -> list[str]:
    return sorted(module_name(root, path) for path in (root / folder).rglob("*.py"))


def framework_free_modules(root: Path) -> list[str]:
    shared = [name for name in modules_under(root, "shared") if not name.startswith("shared.web")]
    return [
        *shared,
        *modules_under(root, "sql_templating"),
        *modules_under(root, "api_server/services"),
        "data_server.engine",
    ]


def source_of(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imports_of(root: Path, name: str) -> set[str]:
    """Every module ``name`` imports, anywhere in its text (functions and TYPE_CHECKING blocks
    included), with the packages whose ``__init__`` each import runs."""
    path = source_of(root, name)
    assert path is not None, name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(
                f"{base}.{alias.name}"
                for alias in node.names
                if source_of(root, f"{base}.{alias.name}") is not None
            )
    own = [n for n in found if n.partition(".")[0] in OWN_PACKAGES]
    return found | {".".join(n.split(".")[:i]) for n in own for i in range(1, n.count(".") + 1)}


def import_chain(root: Path, start: str, forbidden: tuple[str, ...]) -> list[str] | None:
    """The shortest chain of imports from ``start`` to a module under ``forbidden``; None if
    there is none."""
    came_from: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        current = queue.pop(0)
        for imported in sorted(imports_of(root, current)):
            top = imported.partition(".")[0]
            if top in forbidden:
                chain = [imported, current]
                while (previous := came_from[chain[-1]]) is not None:
                    chain.append(previous)
                return chain[::-1]
            if (
                top in OWN_PACKAGES
                and imported not in came_from
                and source_of(root, imported) is not None
            ):
                came_from[imported] = current
                queue.append(imported)
    return None


@pytest.mark.parametrize("module", framework_free_modules(ROOT))
def test_the_core_imports_no_web_framework(module):
    chain = import_chain(ROOT, module, WEB_FRAMEWORKS)
    assert chain is None, " imports ".join(chain or [])


@pytest.mark.parametrize("module", modules_under(ROOT, "sql_templating"))
def test_sql_templating_imports_nothing_of_the_servers(module):
    chain = import_chain(ROOT, module, SERVERS)
    assert chain is None, " imports ".join(chain or [])


def test_the_core_covers_what_the_layering_promises():
    core = framework_free_modules(ROOT)
    assert {"shared.errors", "sql_templating.binding", "data_server.engine"} <= set(core)
    assert any(name.startswith("api_server.services.") for name in core)
    assert not any(name.startswith("shared.web") for name in core)


def _write(root: Path, relative: str, text: str = "") -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_web_framework_reached_through_a_helper_is_found(tmp_path):
    _write(tmp_path, "shared/__init__.py")
    _write(tmp_path, "shared/errors.py")
    _write(tmp_path, "shared/helper.py", "def f():\n    from starlette.requests import Request\n")
    _write(tmp_path, "api_server/__init__.py")
    _write(tmp_path, "api_server/services/__init__.py")
    _write(tmp_path, "api_server/services/clean.py", "from shared import errors\n")
    _write(tmp_path, "api_server/helpers.py", "from shared import helper\n")
    _write(tmp_path, "api_server/services/tainted.py", "from ..helpers import render\n")
    _write(tmp_path, "sql_templating/__init__.py", "from shared.errors import *\n")
    _write(tmp_path, "sql_templating/leaky.py", "import api_server.services.clean\n")

    assert import_chain(tmp_path, "api_server.services.clean", WEB_FRAMEWORKS) is None
    assert import_chain(tmp_path, "api_server.services.tainted", WEB_FRAMEWORKS) == [
        "api_server.services.tainted",
        "api_server.helpers",
        "shared.helper",
        "starlette.requests",
    ]
    assert import_chain(tmp_path, "sql_templating", SERVERS) is None
    assert import_chain(tmp_path, "sql_templating.leaky", SERVERS) == [
        "sql_templating.leaky",
        "api_server",
    ]
