"""The wheel users deploy: built as the README's deploy recipe builds it, complete, self-sufficient.

``python -m build`` (the sdist, then the wheel from it) runs once for the module. The wheel must
hold every module and data file of ``durable_ext/`` and nothing else, state the supported Python
versions, declare every third-party package the code imports, and import in full from the wheel
file alone (no file of the checkout read). The end-to-end run of that wheel under the Functions
host is ``./scripts/deploy_check``.
"""

from __future__ import annotations

import ast
import contextlib
import email.parser
import functools
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "durable_ext"
BUILD_TIMEOUT_S = 180


def _source_files() -> set[str]:
    """Every file of the package in the checkout, as wheel paths (caches excluded)."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"python -m build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    wheels = sorted(out.glob("*.whl"))
    assert [w.name for w in wheels] == [f"durable_ext-{_version()}-py3-none-any.whl"], wheels
    assert len(list(out.glob("*.tar.gz"))) == 1, "python -m build made no sdist"
    return wheels[0]


def _version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    assert match, "pyproject.toml has no static version"
    return match.group(1)


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(archive.read(name).decode())


def test_wheel_holds_exactly_the_package_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if not n.endswith("/") and ".dist-info/" not in n}
    source = _source_files()
    assert any(name.endswith("/__init__.py") for name in source)
    missing, extra = sorted(source - shipped), sorted(shipped - source)
    assert not missing, f"files of durable_ext/ missing from the wheel (add them as package data): {missing}"
    assert not extra, f"files in the wheel that are not in durable_ext/ (a stale build?): {extra}"


def test_metadata_states_the_supported_pythons(wheel: Path) -> None:
    meta = _metadata(wheel)
    requires = meta.get("Requires-Python")
    assert requires, "the wheel's METADATA has no Requires-Python"
    spec = SpecifierSet(requires)
    minors = sorted(
        Version(c.rsplit("::", 1)[1].strip())
        for c in meta.get_all("Classifier") or []
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    )
    assert minors, "no 'Programming Language :: Python :: 3.x' classifiers"
    for version in minors:
        assert version in spec, f"classifier Python {version} is outside Requires-Python {requires}"
    # the lowest classifier is the floor: the one below it is refused
    below = Version(f"3.{minors[0].minor - 1}")
    assert below not in spec, f"Requires-Python {requires} admits {below}, below the lowest classifier"
    assert minors == [Version(f"3.{m}") for m in range(minors[0].minor, minors[-1].minor + 1)], minors
    running = Version(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert running in spec, f"this Python {running} is outside Requires-Python {requires}"
    assert meta["Name"].replace("-", "_") == "durable_ext" and meta["Version"] == _version()


def _imported_top_modules(source: str) -> set[str]:
    """Absolute imports of a module, anywhere in it (module level or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@functools.cache
def _file_owners() -> dict[str, str]:
    """{absolute file path: distribution name} over every installed distribution."""
    owners: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or ():
            owners.setdefault(os.path.normpath(str(dist.locate_file(file))), name)
    return owners


def _distribution_of(module: str) -> str | None:
    """The installed distribution providing ``module`` (None for the standard library)."""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top == "durable_ext":
        return None
    # namespace packages (azure.*): walk down to the first part that is a real module
    parts = module.split(".")
    origin = None
    for depth in range(len(parts), 0, -1):
        spec = importlib.util.find_spec(".".join(parts[:depth]))
        if spec is not None and spec.origin not in (None, "namespace"):
            origin = os.path.normpath(spec.origin)
            break
    assert origin is not None, f"{module} is imported by durable_ext but not installed here"
    owner = _file_owners().get(origin)
    assert owner is not None, f"no installed distribution owns {origin} (imported as {module})"
    return owner


def _closure(requirements: list[str]) -> set[str]:
    """The distributions that installing ``requirements`` brings, as installed here."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # not installed: no deps known
            todo.extend(Requirement(r) for r in importlib.metadata.requires(name) or [])
    return seen


def test_every_imported_package_is_a_runtime_dependency(wheel: Path) -> None:
    meta = _metadata(wheel)
    runtime = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
    provided = _closure(runtime)
    needed: dict[str, set[str]] = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if name.startswith("durable_ext/") and name.endswith(".py"):
                for module in _imported_top_modules(archive.read(name).decode()):
                    dist = _distribution_of(module)
                    if dist is not None:
                        needed.setdefault(dist, set()).add(f"{name}: {module}")
    missing = {dist: sorted(where) for dist, where in needed.items() if dist not in provided}
    assert not missing, f"imported at run time but not brought by the wheel's Requires-Dist: {missing}"


def test_every_module_imports_from_the_wheel_alone(wheel: Path, tmp_path: Path) -> None:
    """Import each module from the wheel file itself (a zip: any file read via the checkout fails)."""
    with zipfile.ZipFile(wheel) as archive:
        modules = sorted(
            n[: -len(".py")].replace("/", ".").removesuffix(".__init__")
            for n in archive.namelist()
            if n.startswith("durable_ext/") and n.endswith(".py") and not n.endswith("__main__.py")
        )
    probe = (
        "import importlib, sys\n"
        f"sys.path.insert(0, {str(wheel)!r})\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(wheel)!r}), (name, module.__file__)\n"
        "print(len(sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, (
        "importing durable_ext from the wheel file failed (a file read through __file__ instead of"
        f" importlib.resources, or one missing from the wheel?):\n{done.stderr[-3000:]}"
    )


def test_console_script_is_declared(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(name).decode()
    assert "durable-ext = durable_ext.cli:main" in entry_points
