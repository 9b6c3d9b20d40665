"""Two-view pre-training data: image sources, MoCo v2 views, pixel correspondences."""

from vader_tf.data.decoding import NoUsableImagesError, SkipCounter
from vader_tf.data.pipeline import two_view_dataset
from vader_tf.data.sources import (
    ImageSource,
    IndexedImageSource,
    folder_source,
    parse_data_spec,
    samples_source,
    tfds_source,
)
from vader_tf.data.views import ViewConfig
