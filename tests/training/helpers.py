"""Small models and synthetic batches for the training tests."""

import functools

import keras
import numpy as np
import tensorflow as tf

from vader_tf.models import build_encoder
from vader_tf.training.optimizers import TorchSGD
from vader_tf.training.pretrain import PretrainConfig
from vader_tf.training.densecl import DenseCL
from vader_tf.training.moco import MoCo
from vader_tf.training.vader import VADeR


def write_smooth_photos(folder, count, seed=0):
    """Writes `count` 80x60 PNGs of smooth random colour fields into `folder`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        # Low-frequency noise upsampled, so views have structure worth matching.
        small = rng.uniform(0, 255, (6, 8, 3)).astype("uint8")
        Image.fromarray(small).resize((80, 60), Image.BILINEAR).save(f"{folder}/img{i}.png")


def small_config(model_dir, data_folder, **overrides):
    """A `PretrainConfig` small enough for CPU tests (ResNet-18, 64 px, batch 4)."""
    settings = dict(
        model_dir=str(model_dir),
        data=f"folder:{data_folder}",
        image_size=64,
        batch_size=4,
        num_points=8,
        queue_size=64,
        queue_points_per_image=4,
        decoder_channels=16,
        embedding_dim=8,
        train_steps=4,
        checkpoint_every=2,
        log_every=1,
        verbose=0,
        # The loop's tests compare float32 numbers (resume, replicas, references);
        # bfloat16 has its own tests (test_mixed_precision.py), the default 'auto' runs
        # in the script and bare-install tests.
        mixed_precision="none",
    )
    settings.update(overrides)
    return PretrainConfig(**settings)


def synthetic_batch(batch_size=4, image_size=64, num_points=8, seed=0, invalid=()):
    rng = np.random.default_rng(seed)
    grid = image_size // 4
    valid = np.ones(batch_size, bool)
    valid[list(invalid)] = False
    return {
        "view1": rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype("float32"),
        "view2": rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype("float32"),
        "points1": rng.uniform(0, grid - 1, (batch_size, num_points, 2)).astype("float32"),
        "points2": rng.uniform(0, grid - 1, (batch_size, num_points, 2)).astype("float32"),
        "valid": valid,
    }


@functools.cache
def two_replicas():
    """A `MirroredStrategy` over the 2 logical CPUs that tests/conftest.py makes.

    One strategy per process: several MirroredStrategy objects in one process can collide
    on collective instance keys.
    """
    devices = [d.name for d in tf.config.list_logical_devices("CPU")[:2]]
    assert len(devices) == 2, "tests/conftest.py splits the CPU into two logical devices"
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )


# A ResNet of one basic block per stage and few channels (keras-hub requires 64 in the
# stem and first stage) (same layout as ResNet-18,
# torchvision padding): for tests that trace many steps and need no capacity.
TINY_RESNET = dict(
    input_conv_filters=[64],
    input_conv_kernel_sizes=[7],
    stackwise_num_filters=[64, 8, 16, 16],
    stackwise_num_blocks=[1, 1, 1, 1],
    stackwise_num_strides=[1, 2, 2, 2],
    block_type="basic_block",
    use_pre_activation=False,
)


def build_small_model(
    method="vader",
    queue_size=64,
    bn_groups=1,
    shuffle_bn=False,
    seed=0,
    momentum=0.9,
    weight_decay=1e-3,
    tiny=False,
    **kwargs,
):
    """A method on a ResNet-18 encoder (or, `tiny=True`, on `TINY_RESNET`)."""
    keras.utils.set_random_seed(seed)
    backbone = dict(backbone="ResNetBackbone", backbone_config=TINY_RESNET) if tiny else {}
    encoder = build_encoder(
        **{"backbone": "resnet18", **backbone},
        decoder_channels=16,
        head_hidden_dim=16,
        embedding_dim=8,
    )
    cls = {"vader": VADeR, "moco": MoCo, "densecl": DenseCL}[method]
    extra = {"queue_points_per_image": 4} if method == "vader" else {"embedding_dim": 8}
    model = cls(
        encoder,
        queue_size=queue_size,
        temperature=0.2,
        momentum=momentum,
        bn_groups=bn_groups,
        shuffle_bn=shuffle_bn,
        seed=seed,
        **extra,
        **kwargs,
    )
    model.compile(optimizer=TorchSGD(0.1, momentum=0.9, weight_decay=weight_decay))
    model.optimizer.build(model.query_model.trainable_variables)
    return model


def run_steps(model, strategy, batches):
    """Runs `model.train_step` on each global batch under `strategy`.

    Returns each step's metrics as the training loop reads them: across replicas, after
    the step, then reset.
    """

    @tf.function
    def step(batch):
        strategy.run(model.train_step, args=(batch,))

    results = []
    for batch in batches:
        dataset = tf.data.Dataset.from_tensors(batch)
        step(next(iter(strategy.experimental_distribute_dataset(dataset))))
        results.append({m.name: float(m.result()) for m in model.metrics})
        for metric in model.metrics:
            metric.reset_state()
    return results
