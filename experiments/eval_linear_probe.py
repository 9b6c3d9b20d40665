"""Linear-probe semantic segmentation on frozen dense features (e.g. CamVid).

The `vader-eval-linear-probe` command (`vader-eval-linear-probe --help`);
its code is in `vader_tf.scripts.eval_linear_probe`.
"""

from vader_tf.scripts.eval_linear_probe import main, run  # noqa: F401  (main: for tests)

if __name__ == "__main__":
    run()
