"""DAVIS video object segmentation by label propagation with frozen dense features.

The `vader-eval-davis` command (`vader-eval-davis --help`);
its code is in `vader_tf.scripts.eval_davis`.
"""

from vader_tf.scripts.eval_davis import main, run  # noqa: F401  (main: for tests)

if __name__ == "__main__":
    run()
