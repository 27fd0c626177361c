# Shared by the resumable end-to-end scripts (dqpilot_pipeline.sh, dqpilot_ablation.sh,
# globe_embedded.sh); source it, do not run it.
#   stage <name> <output that marks it done> <command...>
# runs the command unless its output exists, with a time stamp and the stage's wall time.
stamp() { date -u +%H:%M:%S; }
stage() {
  local name=$1 done_marker=$2; shift 2
  if [ -e "$done_marker" ]; then echo "[$(stamp)] $name: done ($done_marker exists), skipped"; return; fi
  echo "[$(stamp)] $name: start"
  local t0=$SECONDS
  "$@"
  echo "[$(stamp)] $name: finished in $((SECONDS - t0)) s"
}
