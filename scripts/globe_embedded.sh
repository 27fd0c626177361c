#!/usr/bin/env bash
# The embedded GLOBE end to end on the geo world (docs/GLOBE.md, "The ablation"):
# localizability reward model, the policy's tokenizer, pretraining, CoT SFT, the three GRPO
# variants, then the ablation table with the retrieval geolocator and the hybrid.
#   bash scripts/globe_embedded.sh        (or: make globe)
# Resumable: a stage whose output exists is skipped; a stage killed half-way starts over (its log
# folder is cleared first). Needs data/synthcities-geo, data/geo_reasoning/synthcities and the
# retriever of `make demo` (lightning_logs/version_0), as configs/eval/geo_globe_ablation.yaml says.
set -euo pipefail
PY=${PYTHON:-python}
LOGS=lightning_logs/globe
source "$(dirname "${BASH_SOURCE[0]}")/stages.sh"  # stamp, stage
fit() {  # fit <log version> <config> [overrides...]: a fresh log folder, then python -m dlgpr fit
  local version=$1; shift
  rm -rf "$LOGS/$version"
  rm -rf runs/geo_eval/globe_ablation  # predictions of the old policies would be reused under the same config
  $PY -m dlgpr fit --config "$@"
}
T0=$SECONDS
stage "reward model (R_loc)" $LOGS/loc_rm/checkpoints/last.ckpt fit loc_rm configs/globe_loc_rm.yaml
stage "tokenizer" $LOGS/tokenizer/tokenizer.json $PY scripts/build_geo_policy_tokenizer.py --out $LOGS/tokenizer
stage "pretraining (describe images)" $LOGS/pretrain/policy/dlgpr_policy.json fit pretrain configs/globe_policy_pretrain.yaml
stage "CoT SFT" $LOGS/sft/policy/dlgpr_policy.json fit sft configs/globe_sft.yaml
stage "GRPO geo-accuracy" $LOGS/grpo_ga/policy/dlgpr_policy.json fit grpo_ga configs/globe_grpo_ga.yaml
stage "GRPO loc + geo-accuracy" $LOGS/grpo_loc_ga/policy/dlgpr_policy.json fit grpo_loc_ga configs/globe_grpo_loc_ga.yaml
stage "GRPO full" $LOGS/grpo_full/policy/dlgpr_policy.json fit grpo_full configs/globe_grpo.yaml
# the evaluation resumes by itself (predictions already made are kept)
stage "evaluation" runs/geo_eval/globe_ablation/DONE \
  bash -c "$PY scripts/evaluate_geo.py --config configs/eval/geo_globe_ablation.yaml && touch runs/geo_eval/globe_ablation/DONE"
echo "[$(stamp)] embedded GLOBE: $((SECONDS - T0)) s in all; table: runs/geo_eval/globe_ablation"
