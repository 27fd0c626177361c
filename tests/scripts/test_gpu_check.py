"""The prepared GPU check (scripts/gpu_check.py) in its CPU dry-run mode: every part reports
finite numbers, a failing part is reported as skipped while the others still run, and the 7B
policy it builds from config fields is Qwen2.5-VL-7B's architecture."""

import json
import math
from pathlib import Path

import pytest
import torch

from tests.helpers.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


def _numbers(metrics):
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    gc = load_script("gpu_check")
    out = tmp_path_factory.mktemp("gpu_check")
    report = gc.run(gc.parse_args(["--dry-run", "--out", str(out)]))
    return gc, report, out


def test_dry_run_reports_every_part_with_finite_numbers(dry_run):
    gc, report, out = dry_run
    saved = json.loads((out / "gpu_check.json").read_text())
    assert saved["parts"].keys() == set(gc.PARTS) == report["parts"].keys()
    assert saved["environment"]["device"] == "cpu" and saved["environment"]["tiny"] is True
    for name, part in saved["parts"].items():
        assert part["status"] == "ok", (name, part)
        nums = _numbers(part["metrics"])
        assert nums and all(math.isfinite(v) for v in nums.values()), (name, nums)
        assert part["metrics"]["peak_mem_gib"] is None  # CUDA only
    cmpl = saved["parts"]["cmpl_train"]["metrics"]
    assert cmpl["steps"] == 2 and cmpl["step_s"] > 0 and cmpl["images_per_s"] == pytest.approx(cmpl["batch"] / cmpl["step_s"])
    search = saved["parts"]["dialogue_search"]["metrics"]
    assert search["search_device"] == "cpu" and search["gallery"] == 256
    assert 1 <= search["median_rank"] <= search["gallery"] + 1
    for name in ("policy_sft", "policy_grpo"):
        m = saved["parts"][name]["metrics"]
        assert m["tokens_per_s"] > 0 and m["lora_params_m"] > 0
        assert m["prompt_tokens"] == 96
    assert saved["parts"]["policy_sft"]["metrics"]["lora_grad_norm"] > 0  # gradients reach the adapter
    grpo = saved["parts"]["policy_grpo"]["metrics"]
    assert grpo["grad_norm"] > 0 and grpo["rows"] == grpo["prompts"] * grpo["group_size"]
    assert grpo["generate_new_tokens"] >= 1
    md = (out / "gpu_check.md").read_text()
    for name in gc.PARTS:
        assert f"| {name} | ok" in md


def test_sft_prompts_hold_the_images_and_exact_length(dry_run):
    gc, report, _ = dry_run
    m = report["parts"]["policy_sft"]["metrics"]
    # 2 images of 56 px: 4x4 patches of 14 px merged 2x2 -> 4 image tokens each
    assert m["images_per_prompt"] == 2 and m["image_tokens_per_prompt"] == 8


def test_a_failing_part_is_skipped_with_its_reason_and_the_others_still_report(tmp_path, monkeypatch):
    gc = load_script("gpu_check")

    def broken(settings):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setitem(gc.PARTS, "cmpl_train", broken)
    report = gc.run(gc.parse_args(["--dry-run", "--out", str(tmp_path), "--parts", "cmpl_train", "dialogue_search"]))
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved == json.loads(json.dumps(report))
    skipped = saved["parts"]["cmpl_train"]
    assert skipped["status"] == "skipped" and skipped["reason"] == "RuntimeError: CUDA out of memory (simulated)"
    ok = saved["parts"]["dialogue_search"]
    assert ok["status"] == "ok" and all(math.isfinite(v) for v in _numbers(ok["metrics"]).values())
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| cmpl_train | skipped | RuntimeError: CUDA out of memory (simulated) |" in md
    assert "| dialogue_search | ok" in md


def test_parts_past_the_time_budget_are_skipped_not_run(tmp_path, monkeypatch):
    gc = load_script("gpu_check")
    ran = []
    monkeypatch.setitem(gc.PARTS, "cmpl_train", lambda s: ran.append(1) or {"step_s": 1.0})
    report = gc.run(gc.parse_args(["--dry-run", "--out", str(tmp_path), "--parts", "cmpl_train", "--budget-s", "-1"]))
    assert not ran
    assert report["parts"]["cmpl_train"]["status"] == "skipped" and "time budget" in report["parts"]["cmpl_train"]["reason"]


def test_the_paper_scale_policy_is_qwen25vl_7b():
    from transformers import Qwen2_5_VLForConditionalGeneration

    gc = load_script("gpu_check")
    s = gc.Settings(gc.parse_args(["--device", "cpu"]))
    config = gc._policy_config(s, dict(eos=1, pad=0, image=5, video=6, vision_start=3, vision_end=4))
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    # the parameter count of the released Qwen2.5-VL-7B-Instruct checkpoint (vision tower 676.6M)
    assert sum(p.numel() for p in model.parameters()) == 8_292_166_656
    assert sum(p.numel() for p in model.model.visual.parameters()) == 676_550_144
    assert s.prompt_tokens == 4096 and s.completion_tokens == 384 and s.group_size == 8
