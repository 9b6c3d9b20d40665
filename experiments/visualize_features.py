"""Saves pictures of an encoder's dense features for one image.

The `vader-visualize-features` command (`vader-visualize-features --help`);
its code is in `vader_tf.scripts.visualize_features`.
"""

from vader_tf.scripts.visualize_features import main, run  # noqa: F401  (main: for tests)

if __name__ == "__main__":
    run()
