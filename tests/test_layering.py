"""The package's layers, checked on the import statements of every module (DESIGN.md §3).

What runs inside a function app on Azure (bindings, handlers, the runtime
built from app settings) never imports the local emulator in ``host/``; only
the CLI does. ``core/`` does no I/O and knows nothing of Azure.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "durable_ext"


def imported(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def modules(*exclude: str) -> list[Path]:
    """Every module of the package outside the folders and files in ``exclude``."""
    skip = [PACKAGE / e for e in exclude]
    return [p for p in sorted(PACKAGE.rglob("*.py")) if not any(p == s or s in p.parents for s in skip)]


def test_deployed_path_never_imports_the_local_emulator() -> None:
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(n for n in imported(p) if n.startswith("durable_ext.host"))
        for p in modules("host", "cli.py", "__main__.py")
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert offenders == {}, offenders
    assert (PACKAGE / "handlers.py").is_file() and (PACKAGE / "bindings.py").is_file()


def test_core_does_no_io() -> None:
    forbidden = ("azure", "aiohttp", "asyncio", "socket", "subprocess")
    forbidden += ("durable_ext.backends", "durable_ext.host")
    offenders = {}
    for path in (PACKAGE / "core").rglob("*.py"):
        bad = sorted(n for n in imported(path) if n.split(".")[0] in forbidden or n.startswith(forbidden))
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = bad
    assert offenders == {}, offenders
