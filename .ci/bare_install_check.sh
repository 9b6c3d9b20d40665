#!/usr/bin/env bash
# The README's front door on a bare install: a fresh venv with `pip install -e .` (no
# extras) must run the main job through its console command (`vader-pretrain`, from a
# directory outside the repository), the export command that job prints, `load_encoder`,
# and the export must load in plain TensorFlow. Fails if the main path ever needs an
# extra.
#
# Usage: .ci/bare_install_check.sh [VENV_DIR]   (default: .venv-bare, recreated each run)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
VENV="$(realpath -m "${1:-.venv-bare}")"
PY="$VENV/bin/python"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT

rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --no-compile -e "$REPO"
for extra in tensorflow_serving ai_edge_litert torch pytest; do
  if "$PY" -c "import $extra" 2>/dev/null; then
    echo "bare install check: $extra is installed, so this is not a bare install" >&2
    exit 1
  fi
done

# The README's main job, shortened, as its command in the activated venv (run from a
# scratch directory so nothing lands in the repository; the printed command is
# pasteable from there too).
export PATH="$VENV/bin:$PATH"
test "$(command -v vader-pretrain)" = "$VENV/bin/vader-pretrain" \
  || { echo "bare install check: pip made no vader-pretrain command" >&2; exit 1; }
cd "$SCRATCH"
vader-pretrain --train_steps=3 --log_every=1 --checkpoint_every=3 \
  --verbose=0 --model_dir=runs/vader_samples | tee pretrain.out
test -f runs/vader_samples/encoder.keras
ls runs/vader_samples/tensorboard/events.* >/dev/null \
  || { echo "bare install check: no TensorBoard curves were written" >&2; exit 1; }

# The export command exactly as printed.
NEXT="$(sed -n 's/^Next: //p' pretrain.out)"
test -n "$NEXT" || { echo "bare install check: the main job printed no 'Next:' command" >&2; exit 1; }
echo "+ $NEXT"
bash -c "$NEXT"
test -s exports/vader_samples/1/assets.extra/tf_serving_warmup_requests

# The export in plain TensorFlow (vader_tf and Keras unimportable), and load_encoder.
"$PY" - <<'PYTHON'
import sys
for name in ("keras", "keras_hub", "vader_tf"):
    sys.modules[name] = None
import tensorflow as tf
serve = tf.saved_model.load("exports/vader_samples/1").signatures["serving_default"]
features = serve(images=tf.zeros([2, 64, 96, 3], tf.uint8))["features"]
assert features.shape[:3] == (2, 16, 24), features.shape
print("export loads in plain TensorFlow:", features.shape)
PYTHON
"$PY" -c "import vader_tf; print('load_encoder:', vader_tf.load_encoder('runs/vader_samples').output.shape)"
echo "bare install check: OK"
