"""Geometric correspondence (PCK) of frozen dense features under known warps of photos.

The `vader-eval-correspondence` command (`vader-eval-correspondence --help`);
its code is in `vader_tf.scripts.eval_correspondence`.
"""

from vader_tf.scripts.eval_correspondence import main, run  # noqa: F401  (main: for tests)

if __name__ == "__main__":
    run()
