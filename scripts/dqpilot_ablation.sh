#!/usr/bin/env bash
# The DQ-Pilot ablations (Table 4 shape, docs/DQPILOT.md) after scripts/dqpilot_pipeline.sh: the
# corpus with stages drawn at random (same sizes), SFT then GRPO on it; SFT on the whole corpus
# for as many steps as SFT only; then the table and the paired tests of each row against the full
# recipe. Resumable like the pipeline: a stage whose output exists is skipped.
#   bash scripts/dqpilot_ablation.sh
# JOBS=2 trains the two SFT runs side by side with one thread each (faster on 2 cores than one
# after the other with two threads each).
set -euo pipefail
PY=${PYTHON:-python}
LOGS=lightning_logs/dqpilot
EVAL=runs/dialogue_eval/dqpilot_ablation
source "$(dirname "${BASH_SOURCE[0]}")/stages.sh"  # stamp, stage
fit() {  # fit <log version> <config...>
  local version=$1; shift
  rm -rf "$LOGS/$version" "$EVAL"
  $PY -m dlgpr fit "$@"
}
for need in $LOGS/sft/checkpoints/last.ckpt $LOGS/sft/policy/dlgpr_policy.json $LOGS/grpo/policy/dlgpr_policy.json data/dialogues/synthcities/manifest.json; do
  [ -e "$need" ] || { echo "error: $need is missing: run scripts/dqpilot_pipeline.sh first" >&2; exit 1; }
done
# SFT only's number of optimiser steps, read from its last checkpoint, so SFT on the whole corpus trains as long
SFT_STEPS=$($PY -c "import torch; print(torch.load('$LOGS/sft/checkpoints/last.ckpt', map_location='cpu', weights_only=False)['global_step'])")
T0=$SECONDS
stage "corpus, stages drawn at random" data/dialogues/synthcities_random/manifest.json \
  $PY scripts/build_dialogues.py --config configs/build/dialogues_synthcities_random.yaml
sft_random() {
  fit sft_random_stages --config configs/dqpilot_sft.yaml --data.init_args.data_dir data/dialogues/synthcities_random \
    --model.init_args.policy.model data/dialogues/synthcities_random/tokenizer \
    --trainer.logger.init_args.version sft_random_stages --model.init_args.export_dir $LOGS/sft_random_stages/policy
}
sft_all() {
  fit sft_all --config configs/dqpilot_sft.yaml --data.init_args.train_stages '[sft, grpo]' --trainer.max_steps "$SFT_STEPS" \
    --trainer.logger.init_args.version sft_all --model.init_args.export_dir $LOGS/sft_all/policy
}
if [ "${JOBS:-1}" = 2 ]; then
  export OMP_NUM_THREADS=1
  stage "SFT, random stages" $LOGS/sft_random_stages/policy/dlgpr_policy.json sft_random > /tmp/dqpilot_sft_random.log 2>&1 &
  p1=$!
  stage "SFT on the whole corpus ($SFT_STEPS steps)" $LOGS/sft_all/policy/dlgpr_policy.json sft_all > /tmp/dqpilot_sft_all.log 2>&1 &
  p2=$!
  wait $p1 && wait $p2
  unset OMP_NUM_THREADS
  tail -n 1 /tmp/dqpilot_sft_random.log /tmp/dqpilot_sft_all.log
else
  stage "SFT, random stages" $LOGS/sft_random_stages/policy/dlgpr_policy.json sft_random
  stage "SFT on the whole corpus ($SFT_STEPS steps)" $LOGS/sft_all/policy/dlgpr_policy.json sft_all
fi
stage "GRPO, random stages" $LOGS/grpo_random_stages/policy/dlgpr_policy.json \
  fit grpo_random_stages --config configs/dqpilot_grpo.yaml --data.init_args.data_dir data/dialogues/synthcities_random \
    --model.init_args.policy.model $LOGS/sft_random_stages/policy \
    --trainer.logger.init_args.version grpo_random_stages --model.init_args.export_dir $LOGS/grpo_random_stages/policy
stage "Table 4" $EVAL/results.json \
  $PY scripts/evaluate_dialogue.py --config configs/eval/dqpilot_ablation.yaml --ckpt $LOGS/retriever/checkpoints/last.ckpt
echo "[$(stamp)] ablations: $((SECONDS - T0)) s"
cat $EVAL/table.md
for b in "Random sampling (random stages, SFT+GRPO)" "SFT on the whole corpus" "SFT only"; do
  $PY scripts/significance.py $EVAL/results.json $EVAL/results.json --a "Full (DDI stages, SFT+GRPO)" --b "$b" --rounds 5
done
