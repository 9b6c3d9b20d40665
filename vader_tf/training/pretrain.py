"""Pretraining configuration and entry point: data, model, optimiser, strategy, loop.

`experiments/pretrain.py` maps its flags onto `PretrainConfig` and calls `pretrain`.
"""

import contextlib
import dataclasses
import functools
import math

import keras
import tensorflow as tf
from absl import logging
# TensorFlow exports `enable_op_determinism` only; the getter and the switch back that
# `op_determinism` needs to restore the previous state live beside it.
from tensorflow.python.framework import config as tf_config

from vader_tf import storage
from vader_tf.config_flags import option, section_fields
from vader_tf.data import decoding, pipeline, sources, views
from vader_tf.models.backbone import BACKBONES
from vader_tf.models.encoder import INPUT_MULTIPLE, build_encoder
from vader_tf.run_dir import RunDir
from vader_tf.training import distribution, loop, methods, precision, summaries
from vader_tf.training import densecl, moco, vader  # noqa: F401  (registers the built-in methods)
from vader_tf.training.optimizers import TorchSGD

MOMENTUM_SCHEDULES = ("constant", "cosine")

# Fields that must be at least 1.
_POSITIVE_INTS = (
    "decoder_channels",
    "embedding_dim",
    "batch_size",
    "num_points",
    "queue_size",
    "queue_points_per_image",
    "global_queue_size",
    "bn_groups",
    "train_steps",
    "reference_batch_size",
    "max_image_pixels",
    "num_cpu_devices",
    "checkpoint_every",
    "log_every",
    "keep_checkpoints",
)
# Float fields: (low, high, low included); high is always included. Hue jitter is a
# quarter of color_jitter and may shift by at most half the colour wheel.
_FLOAT_RANGES = {
    "min_crop_scale": (0.0, 1.0, False),
    "color_jitter": (0.0, 2.0, True),
    "grayscale_prob": (0.0, 1.0, True),
    "blur_prob": (0.0, 1.0, True),
    "flip_prob": (0.0, 1.0, True),
    "min_overlap": (0.0, 1.0, True),
    "temperature": (0.0, math.inf, False),
    "ema_momentum": (0.0, 1.0, True),
    "base_learning_rate": (0.0, math.inf, True),
    "weight_decay": (0.0, math.inf, True),
    "backbone_learning_rate_scale": (0.0, 1.0, True),
    "sgd_momentum": (0.0, 1.0, True),
    "densecl_loss_weight": (0.0, 1.0, True),
}


# The sections of `PretrainConfig` (Model Garden's layout, flat flags): every field
# belongs to one. `runtime` holds exactly the fields a resumed run may change; every other
# field shapes the model, its optimiser state or the data stream, so it must match the
# stored run.
SECTIONS = ("data", "model", "method", "optimizer", "runtime")
_data, _model, _method, _optimizer, _runtime = (
    functools.partial(option, section=name) for name in SECTIONS
)


class RunConfigMismatchError(ValueError):
    """A run directory is resumed with settings that differ from the ones it was made with."""


def _invalid(name, value, expected):
    raise ValueError(f"{name} must be {expected}, got {value!r}.")


def _interval(low, high, closed_low):
    if high == math.inf:
        return f"{'at least' if closed_low else 'greater than'} {low}"
    return f"in {'[' if closed_low else '('}{low}, {high}]"


@dataclasses.dataclass
class PretrainConfig:
    """Everything a pretraining run depends on. Defaults: the CPU-scale main job.

    Each field is a flag of `experiments/pretrain.py` with the help text given here.
    """

    # Data: what is read and how the two views are made.
    data: str = _data(
        "samples",
        "Images: 'samples' (scikit-image's photos), 'folder:PATH' or "
        "'tfds:NAME[:SPLIT]'.",
    )
    image_size: int = _data(96, "Side of each square view, a multiple of 32.")
    batch_size: int = _data(16, "Global batch size (image pairs per step over all replicas).")
    min_crop_scale: float = _data(0.2, "Smallest random-resized-crop area fraction.")
    color_jitter: float = _data(
        0.4, "Colour jitter strength (brightness/contrast/saturation; hue is a quarter); 0 = off."
    )
    grayscale_prob: float = _data(0.2, "Probability of converting a view to grayscale.")
    blur_prob: float = _data(0.5, "Probability of Gaussian blur.")
    flip_prob: float = _data(0.5, "Probability of a horizontal flip.")
    min_overlap: float = _data(
        0.1,
        "Smallest accepted crop overlap (VADeR only; MoCo and DenseCL draw independent "
        "crops as MoCo v2).",
    )
    max_image_pixels: int = _data(
        decoding.DEFAULT_MAX_IMAGE_PIXELS,
        "Skip (and count) images of more pixels than this (default 8192 x 8192), from their "
        "header, before decoding; images with a side below image_size/4 are skipped too.",
    )
    seed: int = _data(0, "Seed of data order, augmentation, queue init and BN shuffles.")

    # Model: the encoder and the precision it trains in.
    backbone: str = _model(
        "resnet18",
        "resnet18, resnet34, resnet50, resnet101 or csp_resnet50 (timm's CSPResNet-50).",
    )
    backbone_preset: str | None = _model(
        None,
        "keras-hub preset name or local preset dir of a FeaturePyramidBackbone with P2..P5 "
        "(needs internet for names).",
    )
    init_weights: str | None = _model(
        None, "Backbone weights (*.weights.h5), e.g. from export/convert_torch_weights.py."
    )
    decoder_channels: int = _model(128, "Width of the FPN decoder and the projection head.")
    embedding_dim: int = _model(128, "Channels of the output embedding.")
    mixed_precision: str = _model(
        "auto",
        "'auto' (default): bfloat16 where the hardware computes it natively "
        "(AVX512-BF16/AMX CPU, GPU of compute capability >= 8.0, TPU), float16 with loss "
        "scaling on GPUs of compute capability 7.x (V100, T4), float32 elsewhere; "
        "'none' (float32), 'mixed_float16' (GPU) or 'mixed_bfloat16'.",
    )

    # Method: the loss, its queues and the key network.
    method: str = _method(
        "vader",
        "'vader' (pixel-level), 'moco' (image-level MoCo v2 baseline), 'densecl' (DenseCL: "
        "global + dense terms) or another method registered with "
        "vader_tf.training.methods.register_method.",
    )
    num_points: int = _method(64, "Matched points per image pair (VADeR).")
    queue_size: int = _method(4096, "Negatives kept in the queue (K; each of DenseCL's two).")
    queue_points_per_image: int = _method(16, "Key pixels per image enqueued each step (VADeR).")
    temperature: float = _method(0.2, "InfoNCE temperature.")
    densecl_loss_weight: float = _method(
        0.5, "DenseCL: weight lambda of the dense term; the global term gets 1 - lambda."
    )
    # VADeR's optional terms (vader_tf/training/vader.py); off by default.
    global_loss_weight: float = _method(
        0.0,
        "VADeR: weight lambda of an image-level MoCo term on pooled C5 (own head and "
        "queue); the loss is (1 - lambda) * dense + lambda * global; 0 = off.",
    )
    global_queue_size: int = _method(
        256, "VADeR's image-level term: images in its queue (keep it below the data's size)."
    )
    global_level: str = _method(
        "P5",
        "VADeR's image-level term pools P5 (C5, as MoCo v2) or decoder (the served FPN "
        "output, so the term trains the decoder too).",
    )
    coarse_level: str | None = _method(
        None,
        "VADeR: also contrast the matched points on this backbone level (P3, P4 or P5), "
        "through its own head and queue; default: off.",
    )
    coarse_loss_weight: float = _method(
        0.5, "VADeR: the coarse level's share w of the dense loss (stride 4 gets 1 - w)."
    )
    propagation_power: float | None = _method(
        None,
        "VADeR: PixPro's pixel-propagation module on the stride-4 queries, with this "
        "sharpness gamma (at least 1; PixPro uses 2); default: off.",
    )
    ema_momentum: float = _method(0.99, "Momentum of the key network's EMA.")
    momentum_schedule: str = _method(
        "constant", "'constant' or 'cosine' (momentum -> 1 by the last step)."
    )
    bn_groups: int = _method(2, "BN groups per replica for the shuffle-BN guard (1 = off).")
    shuffle_bn: bool = _method(True, "Shuffle images across BN groups for the key network.")
    # The default stays symmetric: no quality measurement yet shows the cheaper step
    # reaches the same features per image seen (docs/training.md). Changes the model's
    # training, so a resumed run must keep it.
    symmetric_loss: bool = _method(
        True,
        "Loss both ways per pair (default); false = MoCo v2/DenseCL's one direction "
        "(queries of view 1, keys of view 2), half the backbone work per pair.",
    )

    # Optimizer.
    base_learning_rate: float = _optimizer(
        0.5, "SGD learning rate for a batch of reference_batch_size."
    )
    reference_batch_size: int = _optimizer(
        256, "Batch size at which base_learning_rate applies (linear scaling)."
    )
    warmup_steps: int = _optimizer(0, "Linear warm-up steps before the cosine decay.")
    # Coupled L2 (PyTorch SGD: g += wd * w before momentum) on all parameters, BN and
    # biases included, exactly as MoCo v2 and DenseCL apply their 1e-4.
    weight_decay: float = _optimizer(
        1e-4,
        "L2 weight decay added to the gradient before momentum (PyTorch SGD, as MoCo v2: "
        "1e-4), on all parameters incl. BN and biases.",
    )
    sgd_momentum: float = _optimizer(0.9, "SGD momentum.")
    backbone_learning_rate_scale: float = _optimizer(
        1.0,
        "Multiplies the backbone's learning rate (decoder and heads keep the full rate): "
        "below 1 keeps a pretrained backbone (--init_weights, --backbone_preset) near its "
        "start while the new decoder trains; 0 freezes its parameters (BN statistics "
        "still follow the data).",
    )

    # Runtime: where, how long and how visibly the run goes; the fields a resumed run may
    # change (checkpoints depend on none of them; the data stream is bitwise the same with
    # and without the decoded-image cache).
    model_dir: str = _runtime(
        "runs/vader_samples", "Run directory: checkpoints, TensorBoard logs, configs."
    )
    train_steps: int = _runtime(150, "Total optimiser steps.")
    checkpoint_every: int = _runtime(50, "Steps between checkpoints.")
    log_every: int = _runtime(10, "Steps between metric reads (one compiled loop call).")
    image_summary_every: int | None = _runtime(
        None,
        "Steps between TensorBoard pictures of the features (2 photos of --data: photo, "
        "PCA colours, similarity map; similarity histograms); default: checkpoint_every; "
        "0 = off.",
    )
    keep_checkpoints: int = _runtime(3, "Checkpoints kept.")
    # The stream is bitwise the same with and without the cache.
    cache_decoded_mb: int = _runtime(
        512,
        "Serve a source whose decoded images fit in this many MB from memory (samples, "
        "folders; never TFRecord streams); 0 = off.",
    )
    strategy: str = _runtime(
        "auto", "'auto', 'default', 'mirrored' or 'multi_worker' (from TF_CONFIG)."
    )
    num_cpu_devices: int = _runtime(
        1, "Split the CPU into this many logical devices (multi-replica without GPUs)."
    )
    deterministic: bool = _runtime(False, "Enable TensorFlow op determinism (slower).")
    # Off by default: on this project's CPUs the XLA step is 1.31x slower than the default
    # graph, whose convolutions run on oneDNN (benchmarks/results/xla.json). Same model and
    # state (only round-off and the BN shuffles drawn differ), so a resumed run may change it.
    jit_compile: bool = _runtime(
        False,
        "Compile the train step with XLA (tf.function(jit_compile=True)), one replica only: "
        "may pay on a GPU; measure first with `python -m benchmarks.xla`.",
    )
    verbose: int = _runtime(1, "1 shows a progress bar.")

    def validate(self):
        """Checks every field; raises `ValueError` naming the first bad one (its flag).

        Nothing may be read from or written to `model_dir` before this passed.
        """
        choices = {
            "method": methods.registered_methods(),
            "mixed_precision": precision.MIXED_PRECISION,
            "momentum_schedule": MOMENTUM_SCHEDULES,
            "strategy": distribution.STRATEGIES,
        }
        if self.backbone_preset is None:
            choices["backbone"] = tuple(BACKBONES)
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                _invalid(name, getattr(self, name), f"one of {', '.join(allowed)}")
        for name in ("model_dir", "data"):
            if not getattr(self, name):
                _invalid(name, getattr(self, name), "a non-empty string")
        if self.image_size < INPUT_MULTIPLE or self.image_size % INPUT_MULTIPLE:
            _invalid("image_size", self.image_size, f"a positive multiple of {INPUT_MULTIPLE}")
        for name in _POSITIVE_INTS:
            if getattr(self, name) < 1:
                _invalid(name, getattr(self, name), "at least 1")
        if self.image_summary_every is not None and self.image_summary_every < 0:
            _invalid("image_summary_every", self.image_summary_every, "at least 0")
        for name in ("warmup_steps", "cache_decoded_mb"):
            if getattr(self, name) < 0:
                _invalid(name, getattr(self, name), "at least 0")
        if self.method == "vader" and self.queue_points_per_image > self.num_points:
            _invalid(
                "queue_points_per_image",
                self.queue_points_per_image,
                f"at most num_points={self.num_points}",
            )
        vader.check_terms(
            self.global_loss_weight, self.global_level, self.coarse_level,
            self.coarse_loss_weight, self.propagation_power,
        )
        if self.method != "vader":
            vader_only = (
                ("global_loss_weight", 0.0), ("global_level", "P5"), ("coarse_level", None),
                ("propagation_power", None),
            )
            for name, off in vader_only:
                if getattr(self, name) != off:
                    _invalid(
                        name, getattr(self, name), f"{off} (a VADeR option) for {self.method}"
                    )
        for name, (low, high, closed_low) in _FLOAT_RANGES.items():
            value = getattr(self, name)
            inside = (value >= low if closed_low else value > low) and value <= high
            if not (math.isfinite(value) and inside):
                _invalid(name, value, _interval(low, high, closed_low))
        if self.verbose not in (0, 1, 2):
            _invalid("verbose", self.verbose, "0, 1 or 2")
        if self.init_weights and not tf.io.gfile.exists(self.init_weights):
            _invalid("init_weights", self.init_weights, "an existing weights file")

    def check_resumable(self):
        """Refuses to resume `model_dir` with settings it was not made with.

        Compares with the stored `run_config.json` when `model_dir` holds a checkpoint;
        fields missing from an older file count as their defaults.

        Raises:
            RunConfigMismatchError: naming every differing field and its stored value.
        """
        run = RunDir(self.model_dir)
        stored = run.read_run_config()
        if stored is None or run.latest_checkpoint() is None:
            return
        defaults = dataclasses.asdict(PretrainConfig())
        differing = [
            (name, stored.get(name, defaults[name]), value)
            for name, value in dataclasses.asdict(self).items()
            if name not in RESUMABLE_FIELDS and stored.get(name, defaults[name]) != value
        ]
        if differing:
            made_with = ", ".join(f"{name}={old}" for name, old, _ in differing)
            given = ", ".join(f"{name}={new}" for name, _, new in differing)
            raise RunConfigMismatchError(
                f"Cannot resume {self.model_dir}: this run was made with {made_with} "
                f"(now {given}). Resume with the stored values or use a new --model_dir; "
                f"only {', '.join(RESUMABLE_FIELDS[1:])} may change on resume."
            )

    @property
    def pair_min_overlap(self):
        """The view pairs' minimum-overlap rule: VADeR's, or none for MoCo v2 and DenseCL,
        whose two views are independent crops."""
        method = methods.get_method(self.method)
        return self.min_overlap if method.needs_overlapping_views else None

    @property
    def learning_rate(self):
        """Peak learning rate: linear scaling of the base rate with the global batch."""
        return self.base_learning_rate * self.batch_size / self.reference_batch_size


# Fields a resumed run may change: the runtime section.
RESUMABLE_FIELDS = section_fields(PretrainConfig, "runtime")


def view_config(config):
    kwargs = dict(
        image_size=config.image_size,
        crop_scale=(config.min_crop_scale, 1.0),
        brightness=config.color_jitter,
        contrast=config.color_jitter,
        saturation=config.color_jitter,
        hue=config.color_jitter / 4,
        grayscale_prob=config.grayscale_prob,
        blur_prob=config.blur_prob,
        flip_prob=config.flip_prob,
    )
    return views.ViewConfig(**kwargs)


def training_dataset(config, source, batch_size, start_index=0, num_shards=1, shard_index=0):
    """The two-view batches `config` trains on (one input pipeline's share)."""
    return pipeline.two_view_dataset(
        source,
        view_config(config),
        batch_size=batch_size,
        num_points=config.num_points,
        seed=config.seed,
        min_overlap=config.pair_min_overlap,
        start_index=start_index,
        num_shards=num_shards,
        shard_index=shard_index,
    )


def build_optimizer(config):
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if config.warmup_steps else config.learning_rate,
        decay_steps=max(config.train_steps - config.warmup_steps, 1),
        warmup_target=config.learning_rate if config.warmup_steps else None,
        warmup_steps=config.warmup_steps,
    )
    # Coupled L2 weight decay through the gradient, on every parameter (BN and biases
    # included), as PyTorch SGD in MoCo v2 / DenseCL; see `vader_tf.training.optimizers`.
    return TorchSGD(
        learning_rate=schedule, momentum=config.sgd_momentum, weight_decay=config.weight_decay
    )


@contextlib.contextmanager
def dtype_policy(mixed_precision):
    """Keras' global dtype policy set to `mixed_precision` for a block ("none": float32;
    "auto": `precision.resolve` picks by hardware).

    Layers take their policy when they are built, so a model built inside keeps it; the
    previous global policy is restored afterwards, so nothing else in the process changes.
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision.resolve(mixed_precision))
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@contextlib.contextmanager
def op_determinism(enabled):
    """TensorFlow op determinism turned on for a block when `enabled`, then restored.

    `enable_op_determinism` is process-wide: left on, it would make every later
    computation of the process deterministic (and unseeded `tf.random` calls raise), so
    one run's setting would leak into the next (e.g. the next test of a pytest run).
    """
    previous = tf_config.is_op_determinism_enabled()
    if enabled and not previous:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if enabled and not previous:
            tf_config.disable_op_determinism()


def build_model(config):
    """The compiled model of `config.method` (call under the strategy's scope).

    Initialisation is seeded by `config.seed`, so two runs of one config start equal.
    Layers compute in `config.mixed_precision` (weights, embeddings, loss, queue and EMA
    stay float32); the process' global dtype policy is left as it was.
    """
    with dtype_policy(config.mixed_precision):
        return _build_model(config)


def _build_model(config):
    keras.utils.set_random_seed(config.seed)
    encoder = build_encoder(
        config.backbone,
        backbone_preset=config.backbone_preset,
        backbone_weights=config.init_weights,
        decoder_channels=config.decoder_channels,
        head_hidden_dim=config.decoder_channels,
        embedding_dim=config.embedding_dim,
        name="encoder",
    )
    common = dict(
        queue_size=config.queue_size,
        temperature=config.temperature,
        momentum=config.ema_momentum,
        momentum_schedule=config.momentum_schedule,
        total_steps=config.train_steps,
        bn_groups=config.bn_groups,
        shuffle_bn=config.shuffle_bn,
        seed=config.seed,
        symmetric_loss=config.symmetric_loss,
    )
    model = methods.get_method(config.method).from_pretrain_config(encoder, config, **common)
    if model.encoder is not encoder:
        raise TypeError(
            f"Method {config.method!r} must set `encoder` to the encoder it was built with."
        )
    optimizer = build_optimizer(config)
    if config.backbone_learning_rate_scale != 1.0:
        optimizer.scale_learning_rate(
            encoder.backbone.trainable_variables, config.backbone_learning_rate_scale
        )
    model.compile(optimizer=optimizer)
    return model


def pretrain(config, strategy=None):
    """Runs (or resumes) the pretraining described by `config`; returns `(model, history)`.

    Everything is checked before anything is written: the config, its agreement with a
    run being resumed, the strategy and the data source. `run_config.json` is written
    only once the model is built and any checkpoint restored.

    Raises:
        ValueError: a bad setting (`RunConfigMismatchError` for a resume with other
            settings, `sources.NoUsableImagesError` when no image of the data decodes).
    """
    config.validate()
    storage.check_writable_dir(config.model_dir, "model_dir")
    config.check_resumable()
    strategy = strategy or distribution.create_strategy(config.strategy, config.num_cpu_devices)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(
            f"batch_size={config.batch_size} must be divisible by the {replicas} replicas."
        )
    if config.jit_compile and replicas > 1:
        # Keras 3's optimizer updates every replica's copy of a variable from one device,
        # which a per-replica XLA cluster cannot reach ('variable on a different device').
        raise ValueError(
            f"--jit_compile compiles a single-replica step; this strategy has {replicas} "
            "replicas (Keras' optimizer updates each replica's variables from one device, "
            "which XLA refuses). Drop --jit_compile or train on one device."
        )
    if (config.batch_size // replicas) % config.bn_groups:
        raise ValueError(
            f"The per-replica batch ({config.batch_size // replicas}) must be divisible by "
            f"bn_groups={config.bn_groups}."
        )
    source = sources.parse_data_spec(
        config.data, decoding.SizeLimits.for_views(config.image_size, config.max_image_pixels)
    )
    source.cache_decoded(config.cache_decoded_mb * 2**20)

    def make_dataset(context, start_index):
        return training_dataset(
            config,
            source,
            batch_size=context.get_per_replica_batch_size(config.batch_size),
            start_index=start_index,
            num_shards=context.num_input_pipelines,
            shard_index=context.input_pipeline_id,
        )

    logging.info("Pretraining %s on %s into %s.", config.method, config.data, config.model_dir)
    # Determinism (`deterministic`) holds for this run only, not the rest of the process.
    with op_determinism(config.deterministic), source.no_usable_images_reraised():
        every = config.image_summary_every
        image_summaries = summaries.ImageSummaries.from_source(
            source, config.image_size, config.checkpoint_every if every is None else every
        )
        return loop.train(
            lambda: build_model(config),
            make_dataset,
            strategy,
            config.model_dir,
            train_steps=config.train_steps,
            global_batch_size=config.batch_size,
            checkpoint_every=config.checkpoint_every,
            log_every=config.log_every,
            keep_checkpoints=config.keep_checkpoints,
            verbose=config.verbose,
            run_config=dataclasses.asdict(config),
            image_summaries=image_summaries,
            jit_compile=config.jit_compile,
        )
