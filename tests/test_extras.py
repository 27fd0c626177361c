"""The base install trains and evaluates without the optional extras; what needs one says which, in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dlgpr.utils import EXTRAS

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter where the extras' packages cannot be imported, as after `pip install dlgpr`.
PROBE = r"""
import importlib, importlib.abc, io, json, runpy, sys, contextlib
BLOCKED = set(json.loads(sys.argv[1]))

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing())
import dlgpr.cli, datamodules.dqcities, datamodules.dialogue, callbacks.dialogue_eval, callbacks.retrieval_eval
import dlgpr.modules.cmpl, dlgpr.modules.dqpilot, dlgpr.dialogue.loop, dlgpr.dialogue.questioners, dlgpr.dialogue.answerers
import dlgpr.dialogue.api, dlgpr.rewards.retrieval_gain, dlgpr.geo.geolocator, dlgpr.geo.evaluation, dlgpr.pipeline.grounding
import dlgpr.app, dlgpr.app.tryit, dlgpr.app.terminal, dlgpr.app.__main__
out = {"loaded_blocked": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}
sys.argv = ["dlgpr", "fit", "--config", "configs/cmpl.yaml", "--print_config"]
buf = io.StringIO()
try:
    with contextlib.redirect_stdout(buf):
        runpy.run_module("dlgpr", run_name="__main__")
except SystemExit as exc:
    out["print_config_exit"] = exc.code
out["print_config_has_model"] = "CMPLModule" in buf.getvalue()
from dlgpr.dialogue.api import ChatAPIConfig, ChatClient
from dlgpr.pipeline.grounding import GroundingConfig, YOLOWorldGrounder
from dlgpr.pipeline.phrases import load_spacy
errors = {}
for name, make in (("openai", lambda: ChatClient(ChatAPIConfig())), ("spacy", load_spacy),
                   ("ultralytics", lambda: YOLOWorldGrounder(GroundingConfig(clip_pretrained=None))),
                   ("gradio", lambda: importlib.import_module("dlgpr.app.web"))):
    try:
        make()
        errors[name] = None
    except ImportError as exc:
        errors[name] = str(exc)
out["errors"] = errors
print(json.dumps(out))
"""


def test_training_and_evaluation_need_no_extra_and_a_missing_one_is_named() -> None:
    blocked = sorted(m for mods in EXTRAS.values() for m in mods)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", PROBE, json.dumps(blocked)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["loaded_blocked"] == []
    assert out["print_config_exit"] in (None, 0) and out["print_config_has_model"]
    extra_of = {m: e for e, mods in EXTRAS.items() for m in mods}
    assert set(out["errors"]) == {"openai", "spacy", "ultralytics", "gradio"}
    for module, message in out["errors"].items():
        assert message is not None and "\n" not in message, module
        assert f"needs the {module} package" in message and f"pip install 'dlgpr[{extra_of[module]}]'" in message


def test_a_missing_module_outside_the_extras_names_its_package(monkeypatch) -> None:
    """faiss is in the base install, but a missing one says which package brings it."""
    import pytest

    from dlgpr.utils import require_extra

    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    with pytest.raises(ImportError) as err:
        require_extra("faiss", "a faiss gallery index")
    assert str(err.value) == "a faiss gallery index needs the faiss module, which is not installed: pip install faiss-cpu"


def test_every_extra_package_is_declared_in_setup_cfg() -> None:
    cfg = (ROOT / "setup.cfg").read_text()
    section = cfg[cfg.index("[options.extras_require]"):]
    for extra, modules in EXTRAS.items():
        block = section[section.index(f"\n{extra} =") :].split("\n\n")[0]
        for module in modules:
            assert f"    {module}>=" in block, (extra, module)
    base = cfg[cfg.index("install_requires"):cfg.index("[options.packages.find]")]
    assert not any(f"    {m}>=" in base for mods in EXTRAS.values() for m in mods)


def test_no_extra_installs_a_second_faiss_next_to_faiss_cpu() -> None:
    """faiss-cpu and faiss-gpu both own the ``faiss`` module; the GPU search path is torch's."""
    cfg = (ROOT / "setup.cfg").read_text()
    assert "    faiss-cpu>=" in cfg[cfg.index("install_requires"):cfg.index("[options.packages.find]")]
    assert "faiss-gpu" not in cfg and "\ngpu =" not in cfg


def test_make_install_takes_torch_from_another_index_when_asked(tmp_path) -> None:
    """``make install TORCH_INDEX_URL=...`` (an older NVIDIA driver) installs torch from that index."""
    def dry_run(*extra: str) -> list[str]:
        out = subprocess.run(["make", "-n", "-B", "install", f"VENV={tmp_path / 'venv'}", *extra], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=True).stdout
        return [line for line in out.splitlines() if "requirements/torch.txt" in line and " -r " in line]

    url = "https://download.pytorch.org/whl/cu126"
    assert len(dry_run()) == 1 and "--index-url" not in dry_run()[0]
    (with_index,) = dry_run(f"TORCH_INDEX_URL={url}")
    assert f"--index-url {url} -r requirements/torch.txt" in with_index
