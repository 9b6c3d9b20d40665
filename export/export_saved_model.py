"""Exports a trained dense encoder as a versioned SavedModel for TensorFlow Serving.

The `vader-export` command (`vader-export --help`);
its code is in `vader_tf.scripts.export_saved_model`.
"""

from vader_tf.scripts.export_saved_model import main, run  # noqa: F401  (main: for tests)

if __name__ == "__main__":
    run()
