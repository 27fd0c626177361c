"""The paper-scale chain connects: GSV-Cities -> configs/build/dqcities_gsv.yaml -> configs/cmpl_vitb16.yaml
-> the builder's dialogues stage -> configs/dqpilot_sft_qwen25vl7b.yaml -> configs/dqpilot_grpo_qwen25vl7b.yaml
-> configs/eval/dqpilot_qwen25vl7b.yaml (docs/DATA.md, "From GSV-Cities to Table 1").

The builder runs with the paper config on a small GSV-Cities-shaped folder, in a scratch working
directory (every path of the chain is relative to it): text from the test's OpenAI-compatible
server, regions from YOLO-World with random weights. Each later config is resolved with
``--print_config`` (no training, no model loading), and every path it reads must be one the
builder wrote (checked on disk) or one an earlier config writes (its logger folder, its export)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from dlgpr.cli import logger_run_dir
from dlgpr.data.reader import iter_records
from dlgpr.data.shards import read_manifest
from dlgpr.pipeline.dqcities import DIALOGUES_DIR, PLACES_DIR
from dlgpr.testing.openai_server import FakeOpenAIServer
from tests.helpers.gsv import World

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "configs" / "build" / "dqcities_gsv.yaml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def run(args: list[str], cwd: Path) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def resolved(args: list[str], cwd: Path) -> dict:
    """The fully resolved config of a CLI (``--print_config``: nothing is trained or loaded)."""
    return yaml.safe_load(run([*args, "--print_config"], cwd))


def fit_config(name: str, cwd: Path) -> dict:
    return resolved(["-m", "dlgpr", "fit", "--config", str(ROOT / "configs" / name)], cwd)


def last_ckpt(config: dict) -> Path:
    """The ``last.ckpt`` a fit config writes: its logger's pinned folder, with ``save_last``."""
    assert any(cb["class_path"].endswith("ModelCheckpoint") and cb["init_args"]["save_last"] for cb in config["trainer"]["callbacks"])
    folder = logger_run_dir(config["trainer"]["logger"])
    assert folder is not None, "the logger's version must be pinned for a later config to find the checkpoint"
    return folder / "checkpoints" / "last.ckpt"


def test_each_paper_scale_config_reads_what_the_step_before_writes(tmp_path):
    world = World(tmp_path, cities=3, places=2)
    work = tmp_path / "work"  # the working directory of every command of the chain
    work.mkdir()
    a, b, c = world.cities

    # 1. the builder, paper config, offline: text, regions, places
    with FakeOpenAIServer() as server:
        server.responder = world.respond
        run([str(ROOT / "scripts" / "build_dqcities.py"), "--config", str(BUILD), "--gsv_root", str(world.gsv), "--progress", "false",
             "--text.api.base_url", server.base_url, "--text.api.model", "fake-vlm", "--text.api.max_concurrency", "3",
             "--text.caption_words", "[1, 60]",
             "--regions.grounding.model", "yolov8s-worldv2.yaml", "--regions.grounding.weights", "null",
             "--regions.grounding.clip_pretrained", "null", "--regions.grounding.device", "cpu", "--regions.grounding.image_batch", "1",
             "--regions.grounding.imgsz", "320", "--regions.grounding.conf", "0.0",
             "--split.fractions", "[1.0, 0.0, 0.0]", "--split.val_cities", f"[{b}]", "--split.test_cities", f"[{c}]"], work)
    build = resolved([str(ROOT / "scripts" / "build_dqcities.py"), "--config", str(BUILD)], work)
    assert "dialogues" not in build["stages"]  # the first run: the retriever is not trained yet
    out = Path(build["out_dir"])
    places, dialogues = out / PLACES_DIR, out / DIALOGUES_DIR
    manifest = read_manifest(work / places)
    records = [r for s in manifest.shards for r in iter_records(work / places / s.path)]
    assert {r.key for r in records} == world.keys
    assert {r.split for r in records} == {"train", "val", "test"} and any(r.regions for r in records)

    # 2. the retrievers train on the builder's place shards; CMPL's checkpoint is the one the builder's dialogues stage reads
    cmpl = fit_config("cmpl_vitb16.yaml", work)
    assert Path(cmpl["data"]["init_args"]["data_dir"]) == places
    retriever = last_ckpt(cmpl)
    assert retriever == Path("lightning_logs/cmpl_vitb16/retriever/checkpoints/last.ckpt")
    baseline = fit_config("clip_baseline_vitb16.yaml", work)
    assert Path(baseline["data"]["init_args"]["data_dir"]) == places
    assert last_ckpt(baseline).parent.parent != retriever.parent.parent  # two runs, two folders
    assert Path(build["retriever"]) == retriever

    # 3. SFT reads the dialogues stage's shards (out_dir/dialogues) and the places; it exports the policy GRPO starts from
    sft = fit_config("dqpilot_sft_qwen25vl7b.yaml", work)
    data = sft["data"]["init_args"]
    assert (Path(data["data_dir"]), Path(data["place_data_dir"])) == (dialogues, places)
    sft_export = Path(sft["model"]["init_args"]["export_dir"])
    assert logger_run_dir(sft["trainer"]["logger"]) is not None

    # 4. GRPO: the SFT export, the CMPL checkpoint and places for the reward, the same corpus
    grpo = fit_config("dqpilot_grpo_qwen25vl7b.yaml", work)
    model = grpo["model"]["init_args"]
    assert Path(model["policy"]["model"]) == sft_export
    (prg,) = [r for r in model["rewards"] if r["name"] == "prg"]
    assert Path(prg["fn"]["init_args"]["retriever"]) == retriever and Path(prg["fn"]["init_args"]["data_dir"]) == places
    data = grpo["data"]["init_args"]
    assert (Path(data["data_dir"]), Path(data["place_data_dir"])) == (dialogues, places)
    grpo_export = Path(model["export_dir"])
    assert grpo_export != sft_export
    assert logger_run_dir(grpo["trainer"]["logger"]) != logger_run_dir(sft["trainer"]["logger"])

    # 5. Table 1: the retriever, the test places the builder wrote, both exported policies
    ev = resolved([str(ROOT / "scripts" / "evaluate_dialogue.py"), "--config", str(ROOT / "configs" / "eval" / "dqpilot_qwen25vl7b.yaml")], work)
    assert Path(ev["ckpt"]) == retriever and Path(ev["data_dir"]) == places
    assert any(r.split == ev["split"] for r in records)
    policies = {Path(q["questioner"]["init_args"]["path"]) for q in ev["questioners"] if q["questioner"]["class_path"].endswith("DQPilotQuestioner")}
    assert policies == {sft_export, grpo_export}
    assert ev["answerer"]["class_path"] == "dlgpr.dialogue.api.LLMAnswerer"  # real places carry no attribute ground truth
