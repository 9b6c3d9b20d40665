"""Exports a run's trained backbone as a keras-hub preset directory.

The `vader-export-keras-hub-preset` command (`vader-export-keras-hub-preset --help`);
its code is in `vader_tf.scripts.export_keras_hub_preset`.
"""

from vader_tf.scripts.export_keras_hub_preset import main, run  # noqa: F401  (main: for tests)

if __name__ == "__main__":
    run()
