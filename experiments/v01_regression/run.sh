#!/bin/bash
# Issue 20 'Also': is the PCK@8 drop (v0.1 0.586 -> 0.543 +- 0.012) and the held-out mIoU
# drop the evaluation change, a training change or seed noise?
#
# Run ONLY when the CPU is free (it trains). Every stage is resumable: rerun the script
# after a kill and it continues (pretraining resumes from its newest checkpoint; exports
# and result JSONs that exist are skipped).
#
#   bash experiments/v01_regression/run.sh                 # stages 0-5 (the answer)
#   ABLATIONS=1 bash experiments/v01_regression/run.sh     # + stage 6: v0.1 with one fix each
#
# Writes result JSONs to results/v01_today_eval/ (commit them) and runs/exports to
# $STUDY/runs/v01/ (STUDY=/work/study by default; today's seed-0 run is the one the
# method tuning trained: experiments/tune_small.py --run_dir=$STUDY/runs).
#
# CPU time (from the recorded timings; "quiet" = results/seed{1,2}, "loaded" = seed0 run
# beside other work on the 2 cores):
#   stage 2  v0.1 pretraining, 1200 steps: 19 min quiet (before_fixes/pretrain_vader.json
#            train_seconds 1153; seed2 1123), up to 65 min loaded (seed0 3865 s).
#   stage 3  two exports: ~20 s each.
#   stage 4  today's evaluations, 21 JSONs (2 encoders x 3 taps x 3 evals + 3 extra):
#            per tap corr 20-70 s, CamVid probe 30-190 s, DAVIS 57-235 s
#            (results/seed*/..._vader_*.json "seconds") -> ~15 min quiet, ~45 min loaded.
#   stage 5  v0.1's own evaluation code: corr 37 s + probe 41 s (before_fixes JSONs);
#            its DAVIS (old, slow propagation: 606 s) only with V01_DAVIS=1.
#   stage 6  per variant: pretraining as stage 2 + 6 evals (~5-15 min): 3 variants
#            ~75 min quiet, up to ~4 h loaded.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
DATA=${VADER_SHARED_DATA:-/work/shared/data}
STUDY=${STUDY:-/work/study}
V01_COMMIT=dfb6e86      # v0.1 (vader_tf 0.1.0): the commit that recorded results/before_fixes
V01_WT=$STUDY/worktrees/v01
OUT=$REPO/results/v01_today_eval
RUNS=$STUDY/runs/v01
TODAY_RUN=$STUDY/runs/seed0/vader   # today's code, the study's budget, seed 0
EVALUATE=$REPO/experiments/v01_regression/evaluate.py
export TF_CPP_MIN_LOG_LEVEL=3 VADER_SHARED_DATA=$DATA
mkdir -p "$RUNS" "$OUT" "$OUT/v01_eval_code"

# The pretraining flags of results/before_fixes/pretrain_vader.json (v0.1's reproduce_small),
# with v0.1's defaults for queue and precision written out (its run_config recorded
# queue_size 4096, mixed_precision none), data paths made absolute.
pretrain_flags() {  # $1 = model_dir
  echo --model_dir="$1" \
    --data=folder:$DATA/bsds500/images/train,folder:$DATA/bsds500/images/test,folder:$DATA/camvid/train \
    --method=vader --backbone=resnet18 --image_size=96 --batch_size=16 --train_steps=1200 \
    --base_learning_rate=0.5 --checkpoint_every=100 --queue_size=4096 --mixed_precision=none \
    --seed=0 --verbose=0
}

step_of() {  # newest checkpoint step of a run dir (0 if none)
  local f=$1/checkpoints/checkpoint
  [ -f "$f" ] && sed -n 's/^model_checkpoint_path: "ckpt-\([0-9]*\)"/\1/p' "$f" || echo 0
}

# Stage 0: a worktree of v0.1 (detached).
[ -d "$V01_WT" ] || git -C "$REPO" worktree add --detach "$V01_WT" $V01_COMMIT
test "$(git -C "$V01_WT" rev-parse --short HEAD)" = $V01_COMMIT

# Stage 1: today's run must be finished (the chain in /work/study trains it).
if [ "$(step_of $TODAY_RUN)" -lt 1200 ]; then
  echo "$TODAY_RUN is at step $(step_of $TODAY_RUN) < 1200: train it first (experiments/tune_small.py --variants=default --run_dir=$STUDY/runs --results_dir=results/methods)." >&2
  exit 1
fi

# Stage 2: retrain v0.1 with v0.1's own pretrain script (resumes from its checkpoints).
pretrain_v01() {  # $1 = worktree, $2 = model_dir, $3 = log
  local cmd="experiments/pretrain.py $(pretrain_flags "$2")"
  echo "cd $1 && PYTHONPATH=$1 python $cmd" > "$2.command"
  if [ "$(step_of "$2")" -lt 1200 ]; then
    (cd "$1" && PYTHONPATH="$1" /usr/bin/time -a -o "$3" -f "wall %e s" \
       $PY $cmd >> "$3" 2>&1)
  fi
  test "$(step_of "$2")" -ge 1200
}
pretrain_v01 "$V01_WT" "$RUNS/vader" "$RUNS/vader.log"

# Stage 3: exports. v0.1's run through v0.1's exporter (serving contract 1: exactly v0.1's
# network, whose decoder upsamples with half-pixel centres); today's run through today's.
export_with() {  # $1 = code dir ("" = today's), $2 = run, $3 = export dir
  [ -d "$3/1" ] && return 0
  if [ -n "$1" ]; then
    (cd "$1" && PYTHONPATH="$1" $PY export/export_saved_model.py --model_dir="$2" --export_dir="$3")
  else
    (cd "$REPO" && $PY export/export_saved_model.py --model_dir="$2" --export_dir="$3")
  fi
}
export_with "$V01_WT" "$RUNS/vader" "$RUNS/vader_export"
export_with "" "$TODAY_RUN" "$RUNS/today_export"

# Stage 4: TODAY's evaluation code, the study's protocols (small_study.StudyConfig defaults:
# CamVid probe 224 px / 1000 steps, DAVIS 192 px, 100 BSDS500 val photos at 256), seed 0.
# Today's run's JSONs already made by tune_small (results/methods/seed0, same harness, same
# protocols, same run dir) are reused, not recomputed: the driver skips JSONs that exist
# with the study's protocol.
for f in $REPO/results/methods/seed0/{pretrain_vader,{linear_probe,davis_label_propagation,correspondence}_vader_{embedding,decoder,P4}}.json; do
  [ -f "$f" ] && grep -q "\"$TODAY_RUN\"" "$f" && cp -n "$f" "$OUT/" || true
done
cd /tmp
$PY $EVALUATE --out="$OUT" \
  --v01_run="$RUNS/vader" --v01_export="$RUNS/vader_export" \
  --today_run="$TODAY_RUN" --today_export="$RUNS/today_export" \
  --v01_command="$(cat "$RUNS/vader.command")"

# Stage 5: v0.1's OWN evaluation code on the retrained v0.1 run (does the retrained run
# reproduce 0.586? separates retraining noise from the evaluation change). Same commands
# as results/before_fixes/*_vader_embedding.json (tap `features` = the head's output).
v01_eval() {  # $1 = script, $2 = output, rest = flags
  local script=$1 output=$2; shift 2
  [ -f "$output" ] && return 0
  (cd "$V01_WT" && PYTHONPATH="$V01_WT" $PY experiments/$script --encoder="$RUNS/vader" \
     --layer=features --seed=0 --output="$output" "$@")
}
v01_eval eval_correspondence.py "$OUT/v01_eval_code/correspondence_v01_vader_embedding.json" \
  --image_dir=$DATA/bsds500/images/val --image_size=256 --num_images=100
v01_eval eval_linear_probe.py "$OUT/v01_eval_code/linear_probe_v01_vader_embedding.json" \
  --data_root=$DATA/camvid --num_classes=11 --ignore_label=11 --image_size=224 --steps=1000
if [ "${V01_DAVIS:-0}" = 1 ]; then
  v01_eval eval_davis.py "$OUT/v01_eval_code/davis_label_propagation_v01_vader_embedding.json" \
    --davis_root=$DATA/davis2016 --image_size=192
fi

# Stage 6 (ABLATIONS=1): v0.1 plus ONE fix each, same budget and seed, evaluated like
# stage 4 (taps embedding, decoder). Worktrees made above: v01-grid = e88a202
# (grid-exact decoder upsampling + exact positives), v01-wd = a7638e1 (coupled weight
# decay, TorchSGD), v01-enqueue = 02d9f39 (on one device: only valid pairs' keys are
# enqueued; its cross-replica shuffle BN and cosine-EMA fix are inert here).
if [ "${ABLATIONS:-0}" = 1 ]; then
  extras=""
  declare -A FIX_COMMIT=([grid]=e88a202 [wd]=a7638e1 [enqueue]=02d9f39)
  for fix in grid wd enqueue; do
    wt=$STUDY/worktrees/v01_$fix
    if [ ! -d "$wt" ]; then  # v0.1 plus that one commit (each cherry-picks cleanly)
      git -C "$REPO" worktree add --detach "$wt" $V01_COMMIT
      git -C "$wt" cherry-pick --no-edit ${FIX_COMMIT[$fix]}
    fi
    pretrain_v01 "$wt" "$RUNS/$fix" "$RUNS/$fix.log"
    export_with "$wt" "$RUNS/$fix" "$RUNS/${fix}_export"
    extras="$extras${extras:+,}v01_$fix=$RUNS/${fix}_export@$RUNS/$fix"
  done
  $PY $EVALUATE --out="$OUT" \
    --v01_run="$RUNS/vader" --v01_export="$RUNS/vader_export" \
    --today_run="$TODAY_RUN" --today_export="$RUNS/today_export" --extra="$extras"
fi

# Summary table (also: python $EVALUATE --out=$OUT --table).
$PY $EVALUATE --out="$OUT" --table
for f in "$OUT"/v01_eval_code/*.json; do
  [ -f "$f" ] && python3 -c "import json,sys; m=json.load(open(sys.argv[1]))['metrics']; print(sys.argv[1].split('/')[-1], m.get('all', {}).get('pck@8', m.get('mean_iou', m.get('JF_mean'))))" "$f"
done
