"""The evaluation protocols, declared once: one frozen dataclass per protocol.

A protocol holds the settings that define what a number means (image size, matching
parameters, probe training budget), not where the data are or which encoder tap is
scored. Each is the single source of truth for its settings:

- its fields (`vader_tf.config_flags.option`: default and help) are the flags of the
  evaluation script of the same names (`config_flags.define_flags`);
- the evaluation function takes the protocol object (list below);
- every result JSON records it under `"protocol"` (`record`, written by
  `vader_tf.eval.reporting.write_results`).

Protocol: script in `experiments/`, function in `vader_tf.eval`:

- `DavisProtocol`: `eval_davis.py`, `davis.evaluate_davis`;
- `CorrespondenceProtocol`: `eval_correspondence.py`,
  `correspondence.evaluate_correspondence`;
- `CamVidProbeProtocol`: `eval_linear_probe.py`, `linear_probe.run_linear_probe`;
- `DepthProtocol`: `eval_depth.py`, `depth.run_depth_probe`;
- `FinetuneProtocol`: `finetune_segmentation.py`, `finetune.finetune_segmentation` (and
  `finetune.build_segmentation_model`).

A study that shrinks a protocol (e.g. `vader_tf/studies/small_study.py`) derives its
objects with `dataclasses.replace`, and the changed values are recorded with its results.
"""

import dataclasses

from vader_tf.config_flags import option

# CamVid in the SegNet layout: classes 0..10, void = 11.
CAMVID_CLASSES = 11
CAMVID_VOID = 11
_RESIZE_HELP = "Short side after resizing (then cropped to x32)."
_CLASSES_HELP = "Number of classes (ids 0..num_classes-1)."


def _check(protocol, positive=(), non_negative=()):
    """Raises a ValueError naming the flag of the first field out of range."""
    for name in (*positive, *non_negative):
        value = getattr(protocol, name)
        if value < 0 or (value == 0 and name in positive):
            text = "positive" if name in positive else ">= 0"
            raise ValueError(f"--{name} must be {text}, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class DavisProtocol:
    """DAVIS video object segmentation by label propagation (`vader_tf.eval.davis`)."""

    image_size: int = option(480, "Short side of the frames fed to the encoder.")
    context_frames: int = option(3, "Previous frames used as references, besides the first.")
    topk: int = option(10, "Most similar reference cells averaged per cell.")
    temperature: float = option(0.07, "Softmax temperature of the top-k similarities.")
    radius: float = option(12.0, "Spatial search radius in feature cells (<= 0: unrestricted).")

    def __post_init__(self):
        _check(self, positive=("image_size", "topk", "temperature"))
        _check(self, non_negative=("context_frames",))

    @property
    def search_radius(self):
        """`radius`, or None (unrestricted) when it is <= 0."""
        return self.radius if self.radius > 0 else None


@dataclasses.dataclass(frozen=True)
class CorrespondenceProtocol:
    """PCK of feature matching under known warps of photos (`vader_tf.eval.correspondence`)."""

    image_size: int = option(256, _RESIZE_HELP)
    thresholds: tuple[float, ...] = option((4.0, 8.0, 16.0, 32.0), "PCK distances in pixels.")
    warps_per_image: int = option(1, "Warps of each kind (crop_flip, homography) per photo.")
    min_scale: float = option(0.6, "Smallest crop side relative to the photo.")
    perspective: float = option(0.15, "Max corner shift of homographies, relative to the crop.")
    point_stride: int = option(2, "Score every n-th source feature cell in each direction.")

    def __post_init__(self):
        _check(self, positive=("image_size", "warps_per_image", "point_stride", "min_scale"))
        _check(self, non_negative=("perspective",))
        if self.min_scale > 1:
            raise ValueError(f"--min_scale must be at most 1, got {self.min_scale}.")
        if not self.thresholds:
            raise ValueError("--thresholds must name at least one distance in pixels.")

    @property
    def scale_range(self):
        """Range of the crop side relative to the photo."""
        return (self.min_scale, 1.0)


@dataclasses.dataclass(frozen=True)
class LinearHeadProtocol:
    """Settings shared by the linear probes on frozen features
    (`vader_tf.eval.linear_probe.fit_linear_head`)."""

    image_size: int = option(224, _RESIZE_HELP)
    steps: int = option(2000, "Optimisation steps of the probe.")
    batch_size: int = option(4096, "Feature cells per step.")
    learning_rate: float = option(1e-2, "Adam learning rate.")
    pixels_per_image: int = option(1000, "Valid cells sampled per training image (0 = all).")

    def __post_init__(self):
        _check(self, positive=("image_size", "steps", "batch_size", "learning_rate"))
        _check(self, non_negative=("pixels_per_image",))


@dataclasses.dataclass(frozen=True)
class CamVidProbeProtocol(LinearHeadProtocol):
    """Linear-probe semantic segmentation, CamVid classes by default."""

    num_classes: int = option(CAMVID_CLASSES, _CLASSES_HELP)
    ignore_label: int = option(CAMVID_VOID, "Label id excluded from training and scoring.")

    def __post_init__(self):
        super().__post_init__()
        _check(self, positive=("num_classes",))


@dataclasses.dataclass(frozen=True)
class DepthProtocol(LinearHeadProtocol):
    """Linear depth probe scored with the NYU-v2 metrics (`vader_tf.eval.depth`)."""


@dataclasses.dataclass(frozen=True)
class FinetuneProtocol:
    """Fine-tuning the encoder with a small segmentation head (`vader_tf.eval.finetune`)."""

    num_classes: int = option(CAMVID_CLASSES, _CLASSES_HELP)
    ignore_label: int = option(CAMVID_VOID, "Label id excluded from the loss and from scoring.")
    image_size: int = option(224, _RESIZE_HELP)
    steps: int = option(1000, "Optimisation steps.")
    batch_size: int = option(8, "Images per step.")
    learning_rate: float = option(1e-3, "Adam learning rate.")
    head_channels: int = option(64, "Channels of the head's 3x3 convolution.")

    def __post_init__(self):
        _check(
            self,
            positive=("num_classes", "image_size", "steps", "batch_size", "learning_rate",
                      "head_channels"),
        )


PROTOCOLS = (
    DavisProtocol,
    CorrespondenceProtocol,
    CamVidProbeProtocol,
    DepthProtocol,
    FinetuneProtocol,
)


def record(protocol):
    """`{"name": class name, **fields}`: how a result JSON records `protocol`."""
    return {"name": type(protocol).__name__, **dataclasses.asdict(protocol)}

