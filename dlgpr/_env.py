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


def restore_pil_open() -> None:
    """Undo ultralytics' replacement of ``PIL.Image.open``; call right after importing ultralytics.

    On import, ultralytics wraps ``Image.open``: when Pillow cannot identify a file, the wrapper
    tries to import pi-heif (for HEIC photos) and, that package being absent here, raises
    ``ModuleNotFoundError`` instead of ``PIL.UnidentifiedImageError``. Every reader of the project
    counts an unreadable image as a bad sample by catching Pillow's own errors (``OSError``), so
    in a process that has imported ultralytics one corrupt file would stop a long run. Restoring
    Pillow's function keeps those errors what they are (HEIC/HEIF files are then not readable,
    as without ultralytics).
    """
    try:
        from PIL import Image
        from ultralytics.utils import patches
    except ImportError:
        return
    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is not original:
        Image.open = original

