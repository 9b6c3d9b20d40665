from vader_tf.models.backbone import build_backbone
from vader_tf.models.encoder import DenseEncoder, build_encoder
