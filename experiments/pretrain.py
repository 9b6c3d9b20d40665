"""Pretrains dense features with VADeR (or the MoCo v2 or DenseCL baselines, `--method`).

The `vader-pretrain` command (`vader-pretrain --help`);
its code is in `vader_tf.scripts.pretrain`.
"""

from vader_tf.scripts.pretrain import main, run  # noqa: F401  (main: for tests)

if __name__ == "__main__":
    run()
