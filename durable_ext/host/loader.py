"""Load a function app (``function_app.py``) and its settings from a folder."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..app import DurableApp
from ..core.errors import DurableError


class AppLoadError(DurableError):
    """The folder has no loadable function app; the message says what is missing."""


def load_app(app_dir: str | os.PathLike[str]) -> DurableApp:
    """Import ``function_app.py`` from ``app_dir`` and return its DurableApp instance."""
    folder = Path(app_dir).resolve()
    script = folder / "function_app.py"
    if not script.is_file():
        raise AppLoadError(f"no function_app.py in {folder}")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("function_app", script)
    if spec is None or spec.loader is None:
        raise AppLoadError(f"cannot import {script}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["function_app"] = module
    spec.loader.exec_module(module)
    apps = [v for v in vars(module).values() if isinstance(v, DurableApp)]
    if not apps:
        raise AppLoadError(f"{script} defines no DurableApp (app = durable_ext.DurableApp())")
    return apps[0]


def load_settings(app_dir: str | os.PathLike[str]) -> dict[str, str]:
    """``Values`` of ``local.settings.json`` overlaid by the process environment, as the host does."""
    settings: dict[str, str] = {}
    path = Path(app_dir) / "local.settings.json"
    if path.is_file():
        data: Any = json.loads(path.read_text())
        values = data.get("Values") or {}
        settings.update({str(k): str(v) for k, v in values.items()})
    settings.update(os.environ)
    return settings
