"""vader-tf: dense self-supervised visual features by VADeR, in TensorFlow/Keras 3."""

__version__ = "0.1.0"

from vader_tf.models import DenseEncoder, build_backbone, build_encoder
from vader_tf.run_dir import load_encoder
