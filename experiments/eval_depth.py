"""Linear depth probe on frozen dense features (NYU-v2 metrics).

The `vader-eval-depth` command (`vader-eval-depth --help`);
its code is in `vader_tf.scripts.eval_depth`.
"""

from vader_tf.scripts.eval_depth import main, run  # noqa: F401  (main: for tests)

if __name__ == "__main__":
    run()
