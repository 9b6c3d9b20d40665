"""Pretraining configuration and entry point: data, model, optimiser, strategy, loop.

`experiments/pretrain.py` maps its flags onto `PretrainConfig` and calls `pretrain`.
"""

import dataclasses
import os

import keras
from absl import logging

from vader_tf import run_dir
from vader_tf.data import pipeline, sources, views
from vader_tf.models.encoder import build_encoder
from vader_tf.training import distribution, loop
from vader_tf.training.optimizers import TorchSGD
from vader_tf.training.moco import MoCo
from vader_tf.training.vader import VADeR

METHODS = ("vader", "moco")
MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass
class PretrainConfig:
    """Everything a pretraining run depends on. Defaults: the CPU-scale main job."""

    model_dir: str = "runs/vader_samples"
    data: str = "samples"
    method: str = "vader"
    # Model.
    backbone: str = "resnet18"
    backbone_preset: str | None = None
    init_weights: str | None = None
    decoder_channels: int = 128
    embedding_dim: int = 128
    # Data and views.
    image_size: int = 96
    batch_size: int = 16
    num_points: int = 64
    min_crop_scale: float = 0.2
    color_jitter: float = 0.4
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    flip_prob: float = 0.5
    min_overlap: float = 0.1
    # Method.
    queue_size: int = 4096
    queue_points_per_image: int = 16
    temperature: float = 0.2
    ema_momentum: float = 0.99
    momentum_schedule: str = "constant"
    bn_groups: int = 2
    shuffle_bn: bool = True
    # Optimisation.
    train_steps: int = 150
    base_learning_rate: float = 0.5
    reference_batch_size: int = 256
    warmup_steps: int = 0
    # Coupled L2 (PyTorch SGD: g += wd * w before momentum) on all parameters, BN and
    # biases included, exactly as MoCo v2 and DenseCL apply their 1e-4.
    weight_decay: float = 1e-4
    sgd_momentum: float = 0.9
    mixed_precision: str = "none"
    # Running.
    strategy: str = "auto"
    num_cpu_devices: int = 1
    checkpoint_every: int = 50
    log_every: int = 10
    keep_checkpoints: int = 3
    seed: int = 0
    deterministic: bool = False
    verbose: int = 1

    def validate(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}"
            )
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        for name in ("batch_size", "train_steps", "num_points", "queue_size", "bn_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def pair_min_overlap(self):
        """The view pairs' minimum-overlap rule: VADeR's, or none for MoCo v2, whose two
        views are independent crops."""
        return self.min_overlap if self.method == "vader" else None

    @property
    def learning_rate(self):
        """Peak learning rate: linear scaling of the base rate with the global batch."""
        return self.base_learning_rate * self.batch_size / self.reference_batch_size


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


def build_model(config):
    """The compiled VADeR or MoCo model of `config` (call under the strategy's scope).

    Initialisation is seeded by `config.seed`, so two runs of one config start equal.
    """
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
    )
    if config.method == "vader":
        model = VADeR(encoder, queue_points_per_image=config.queue_points_per_image, **common)
    else:
        model = MoCo(encoder, embedding_dim=config.embedding_dim, **common)
    model.compile(optimizer=build_optimizer(config))
    return model


def pretrain(config, strategy=None):
    """Runs (or resumes) the pretraining described by `config`; returns `(model, history)`."""
    config.validate()
    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    if config.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(config.mixed_precision)
    strategy = strategy or distribution.create_strategy(config.strategy, config.num_cpu_devices)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(
            f"batch_size={config.batch_size} must be divisible by the {replicas} replicas."
        )
    if (config.batch_size // replicas) % config.bn_groups:
        raise ValueError(
            f"The per-replica batch ({config.batch_size // replicas}) must be divisible by "
            f"bn_groups={config.bn_groups}."
        )
    source = sources.parse_data_spec(config.data)

    def make_dataset(context, start_index):
        return training_dataset(
            config,
            source,
            batch_size=context.get_per_replica_batch_size(config.batch_size),
            start_index=start_index,
            num_shards=context.num_input_pipelines,
            shard_index=context.input_pipeline_id,
        )

    os.makedirs(config.model_dir, exist_ok=True)
    if distribution.is_chief(strategy):
        run_dir.write_json_atomic(
            os.path.join(config.model_dir, run_dir.RUN_CONFIG), dataclasses.asdict(config)
        )
    logging.info("Pretraining %s on %s into %s.", config.method, config.data, config.model_dir)
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
    )
