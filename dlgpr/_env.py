"""Process environment that must be set before heavy third-party imports.

ultralytics probes DNS hosts, may pip-install missing packages and writes a settings file into
the home folder as soon as it is imported. dlgpr runs on machines without network and must not
write outside the project, so the switches below are set (without overriding what a user set)
when ``dlgpr`` is imported, i.e. before any of our modules imports ultralytics.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Project-local cache folder: ``$DLGPR_CACHE_DIR`` or ``./.cache`` under the working directory."""
    return Path(os.environ.get("DLGPR_CACHE_DIR", Path.cwd() / ".cache"))


def configure_offline_env() -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_dir() / "ultralytics"))
