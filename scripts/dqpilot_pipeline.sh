#!/usr/bin/env bash
# The embedded DlgPR questioner pipeline end to end (docs/DQPILOT.md): the retriever, the dialogue
# corpus, DQ-Pilot SFT, GRPO, then Table 1 (every questioner on the SynthCities test split) and the
# paired tests of its adjacent rows.
#   bash scripts/dqpilot_pipeline.sh        (or: make pipeline)
# Resumable: a stage whose output exists is skipped; a training stage killed half-way starts over
# (its log folder is cleared first); the corpus build resumes from its finished chunks.
# Needs data/synthcities (written by the first `python -m dlgpr fit --config configs/cmpl.yaml`).
set -euo pipefail
PY=${PYTHON:-python}
LOGS=lightning_logs/dqpilot
EVAL=runs/dialogue_eval/dqpilot
source "$(dirname "${BASH_SOURCE[0]}")/stages.sh"  # stamp, stage
fit() {  # fit <log version> <config...>: a fresh log folder, then python -m dlgpr fit
  local version=$1; shift
  rm -rf "$LOGS/$version"
  rm -rf "$EVAL"  # the table of the old policies would stand for the new ones
  $PY -m dlgpr fit "$@"
}
T0=$SECONDS
stage "retriever" $LOGS/retriever/checkpoints/last.ckpt \
  fit retriever --config configs/cmpl.yaml --config configs/overrides/dqpilot_retriever.yaml
stage "dialogue corpus" data/dialogues/synthcities/manifest.json \
  $PY scripts/build_dialogues.py --config configs/build/dialogues_synthcities.yaml
stage "DQ-Pilot SFT" $LOGS/sft/policy/dlgpr_policy.json fit sft --config configs/dqpilot_sft.yaml
stage "DQ-Pilot GRPO" $LOGS/grpo/policy/dlgpr_policy.json fit grpo --config configs/dqpilot_grpo.yaml
stage "DQ-Pilot GRPO, log-rank reward" $LOGS/grpo_log_rank/policy/dlgpr_policy.json \
  fit grpo_log_rank --config configs/dqpilot_grpo.yaml --config configs/overrides/dqpilot_grpo_log_rank.yaml
stage "Table 1" $EVAL/results.json \
  $PY scripts/evaluate_dialogue.py --config configs/eval/dqpilot.yaml --ckpt $LOGS/retriever/checkpoints/last.ckpt
echo "[$(stamp)] pipeline: $((SECONDS - T0)) s in all"
cat $EVAL/table.md
# how GRPO learned: reward by quarter of the run, groups without reward spread, within-group std
$PY scripts/grpo_learning.py $LOGS/grpo $LOGS/grpo_log_rank
# each row against the next one down the paper's ordering, paired over the test places (round 5)
pairs=("DQ-Pilot SFT+GRPO (log-rank reward)|DQ-Pilot SFT" "DQ-Pilot SFT+GRPO|DQ-Pilot SFT" "DQ-Pilot SFT|PlugIR (attribute LM)" "PlugIR (attribute LM)|Random")
for p in "${pairs[@]}"; do
  $PY scripts/significance.py $EVAL/results.json $EVAL/results.json --a "${p%%|*}" --b "${p##*|}" --rounds 5
done
