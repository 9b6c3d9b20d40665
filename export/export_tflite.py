"""Converts an exported SavedModel to a TFLite / LiteRT model and reports its parity.

The `vader-export-tflite` command (`vader-export-tflite --help`);
its code is in `vader_tf.scripts.export_tflite`.
"""

from vader_tf.scripts.export_tflite import main, run  # noqa: F401  (main: for tests)

if __name__ == "__main__":
    run()
