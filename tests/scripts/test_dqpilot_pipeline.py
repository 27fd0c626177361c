"""scripts/dqpilot_pipeline.sh resumes: stages whose output exists are skipped, a missing one runs
(and clears the stale table), and the table stage reads what the evaluation wrote.

A stand-in ``$PYTHON`` records every call and writes the output a real stage would leave."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

STUB = r"""#!/usr/bin/env bash
echo "$*" >> calls.log
case "$*" in
  *evaluate_dialogue.py*) mkdir -p runs/dialogue_eval/dqpilot && echo "| table |" > runs/dialogue_eval/dqpilot/table.md \
                          && echo "{}" > runs/dialogue_eval/dqpilot/results.json ;;
  *"-m dlgpr fit"*dqpilot_grpo_log_rank*) mkdir -p lightning_logs/dqpilot/grpo_log_rank/policy && touch lightning_logs/dqpilot/grpo_log_rank/policy/dlgpr_policy.json ;;
esac
"""

DONE = ["lightning_logs/dqpilot/retriever/checkpoints/last.ckpt", "data/dialogues/synthcities/manifest.json",
        "lightning_logs/dqpilot/sft/policy/dlgpr_policy.json", "lightning_logs/dqpilot/grpo/policy/dlgpr_policy.json"]


def test_the_pipeline_skips_finished_stages_and_runs_the_missing_one(tmp_path):
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    for path in DONE:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
    stale = tmp_path / "runs/dialogue_eval/dqpilot/results.json"  # a table of older policies
    stale.parent.mkdir(parents=True)
    stale.write_text("stale")
    run = subprocess.run(["bash", str(ROOT / "scripts/dqpilot_pipeline.sh")], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHON": str(stub)}, timeout=60)
    assert run.returncode == 0, run.stderr
    for stage in ("retriever", "dialogue corpus", "DQ-Pilot SFT", "DQ-Pilot GRPO"):
        assert f"{stage}: done (" in run.stdout
    calls = (tmp_path / "calls.log").read_text().splitlines()
    fits = [c for c in calls if c.startswith("-m dlgpr fit")]
    assert len(fits) == 1 and "configs/overrides/dqpilot_grpo_log_rank.yaml" in fits[0]  # only the missing stage trained
    # the stale table was cleared by the new training stage and evaluated again, then tested pairwise
    assert stale.read_text() == "{}\n" and any("evaluate_dialogue.py" in c for c in calls)
    assert sum("significance.py" in c for c in calls) == 4 and any("grpo_learning.py" in c for c in calls)
    # a second run has nothing left to do but print the table
    again = subprocess.run(["bash", str(ROOT / "scripts/dqpilot_pipeline.sh")], cwd=tmp_path, capture_output=True, text=True,
                           env={**os.environ, "PYTHON": str(stub)}, timeout=60)
    assert again.returncode == 0 and "Table 1: done (" in again.stdout
    assert sum(c.startswith("-m dlgpr fit") for c in (tmp_path / "calls.log").read_text().splitlines()) == 1
