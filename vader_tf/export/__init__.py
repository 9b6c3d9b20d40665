"""Export of the trained encoder: TF Serving SavedModel and TFLite / LiteRT."""

from vader_tf.export.saved_model import export_saved_model
from vader_tf.export.tflite import export_tflite
