"""Shared fixtures. Everything a test reads is generated under tmp_path; nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DLGPR_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache"))

import pytest  # noqa: E402
import torch  # noqa: E402

import dlgpr  # noqa: E402,F401  (sets the offline environment before anything imports ultralytics)
from tests.helpers.shards import make_tiny_dataset  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "tiny"
    make_tiny_dataset(root)
    return root
