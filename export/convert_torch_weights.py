"""Converts a PyTorch ResNet checkpoint (MoCo v2, torchvision, DenseCL, PixPro) to Keras.

The `vader-convert-torch-weights` command (`vader-convert-torch-weights --help`);
its code is in `vader_tf.scripts.convert_torch_weights`.
"""

from vader_tf.scripts.convert_torch_weights import main, run  # noqa: F401  (main: for tests)

if __name__ == "__main__":
    run()
