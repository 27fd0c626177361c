"""The documentation stands alone and names code that exists."""

import importlib
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _resolve(name: str) -> object:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


def test_every_function_method_md_names_exists():
    text = (ROOT / "docs" / "METHOD.md").read_text()
    names = sorted(set(re.findall(r"`((?:dlgpr|callbacks|datamodules)\.[\w.]+)`", text)))
    assert len(names) > 30
    missing = []
    for name in names:
        try:
            _resolve(name)
        except (ImportError, AttributeError) as exc:
            missing.append(f"{name}: {exc}")
    assert not missing, missing


def test_no_file_cites_documents_outside_the_repository():
    # formulas live in docs/METHOD.md; nothing may send a reader to a file they do not have
    outside = re.compile(r"\b(DESIGN|REFERENCE)\.md\b")
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("data", "lightning_logs", "runs", "__pycache__") and not d.endswith(".egg-info")]
        files += [Path(folder) / n for n in names if n.endswith((".py", ".md", ".yaml", ".cfg", ".toml"))]
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in files if p.name != "test_docs.py"
            for i, line in enumerate(p.read_text(errors="ignore").splitlines(), 1) if outside.search(line)]
    assert not hits, hits
