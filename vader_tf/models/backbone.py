"""Backbones with pyramid outputs P2..P5 (strides 4..32), built on keras-hub.

Any keras-hub `FeaturePyramidBackbone` whose `pyramid_outputs` hold "P2".."P5" at strides
4, 8, 16 and 32 can feed the dense encoder, given (`build_backbone`) by one of our short
names (`BACKBONES`), by a keras-hub class name and its constructor arguments, or by a
preset (a local preset directory; preset names need internet access).

The encoder's grid convention (`vader_tf.ops.grid`: cell `j` of a stride-`s` map centred
on input pixel `s * j`) holds only for backbones that pad like torchvision (every
strided window symmetric about its output's centre). `grid_offsets` reads where each
level puts its cells from the layers' kernels, strides and paddings, and
`check_pyramid` refuses a backbone whose levels are off the grid (TensorFlow's "same"
padding, used e.g. by keras-hub's DenseNet, centres a stride-2 window one input pixel
to the right of torchvision's); `tests/models/test_grid_alignment.py` measures the same
offsets on the networks themselves.

The ResNet layouts match torchvision's ResNet v1.5 (stride on the 3x3 convolution of the
bottleneck, explicit zero padding), so weights converted from PyTorch (MoCo v2,
torchvision, DenseCL) load one-to-one; see `vader_tf.models.torch_weights`.
"""

import contextlib
import inspect
import shutil
import tempfile

import keras
import keras_hub
import tensorflow as tf

from vader_tf import storage

# Constructor arguments of `keras_hub.models.ResNetBackbone` per architecture.
BACKBONE_CONFIGS = {
    "resnet18": dict(
        stackwise_num_blocks=[2, 2, 2, 2],
        block_type="basic_block",
    ),
    "resnet34": dict(
        stackwise_num_blocks=[3, 4, 6, 3],
        block_type="basic_block",
    ),
    "resnet50": dict(
        stackwise_num_blocks=[3, 4, 6, 3],
        block_type="bottleneck_block",
    ),
    "resnet101": dict(
        stackwise_num_blocks=[3, 4, 23, 3],
        block_type="bottleneck_block",
    ),
}

_RESNET_V1_5 = dict(
    input_conv_filters=[64],
    input_conv_kernel_sizes=[7],
    stackwise_num_filters=[64, 128, 256, 512],
    stackwise_num_strides=[1, 2, 2, 2],
    use_pre_activation=False,
)

# Our short names: `(keras-hub backbone class name, constructor arguments)`.
BACKBONES = {
    **{
        name: ("ResNetBackbone", {**_RESNET_V1_5, **config})
        for name, config in BACKBONE_CONFIGS.items()
    },
    # timm's CSPResNet-50 (the layout of keras-hub's "csp_resnet_50_ra_imagenet").
    "csp_resnet50": (
        "CSPNetBackbone",
        dict(
            stem_filters=64,
            stem_kernel_size=7,
            stem_strides=4,
            stem_pooling="max",
            stackwise_depth=[3, 3, 5, 2],
            stackwise_strides=[1, 2, 2, 2],
            stackwise_num_filters=[128, 256, 512, 1024],
            block_type="bottleneck_block",
            stage_type="csp",
            bottle_ratio=[0.5],
            expand_ratio=[2.0],
            cross_linear=True,
        ),
    ),
}

# The pyramid levels the decoder reads, finest first, and their strides.
PYRAMID_LEVELS = ("P2", "P3", "P4", "P5")
PYRAMID_STRIDES = {"P2": 4, "P3": 8, "P4": 16, "P5": 32}


def build_backbone(name="resnet18", preset=None, weights=None, config=None):
    """Builds a backbone with dynamic input size and pyramid outputs P2..P5.

    Args:
        name: one of `BACKBONES` ("resnet18", "resnet34", "resnet50", "resnet101",
            "csp_resnet50"), or with `config` the name of a keras-hub
            `FeaturePyramidBackbone` class (e.g. "CSPNetBackbone"). Ignored when `preset`
            is given.
        preset: optional keras-hub preset name (for example "resnet_50_imagenet";
            needs internet access) or preset directory, local or on any filesystem
            `tf.io.gfile` knows (e.g. one written by
            `export/export_keras_hub_preset.py` on `gs://`).
        weights: optional path to a backbone weights file (`*.weights.h5`), e.g. one
            written by `export/convert_torch_weights.py`.
        config: constructor arguments of the keras-hub class `name`.

    Returns:
        A `keras_hub.models.FeaturePyramidBackbone` that passed `check_pyramid`.

    Raises:
        ValueError: an unknown name or class, or a backbone `check_pyramid` refuses.
    """
    if preset is not None:
        with local_preset(preset) as path:
            backbone = keras_hub.models.Backbone.from_preset(path)
        source = f"preset {preset!r}"
    else:
        if config is None:
            if name not in BACKBONES:
                raise ValueError(
                    f"Unknown backbone {name!r}; expected one of {sorted(BACKBONES)} "
                    "(or a keras-hub backbone class name with its config)."
                )
            name, config = BACKBONES[name]
        cls = getattr(keras_hub.models, name, None)
        if not (isinstance(cls, type) and issubclass(cls, keras_hub.models.Backbone)):
            raise ValueError(f"Unknown keras-hub backbone class {name!r}.")
        config = dict(config)
        # Dynamic input size; families name this argument "image_shape" or "input_shape".
        arguments = inspect.signature(cls.__init__).parameters
        for shape_key in ("image_shape", "input_shape"):
            if shape_key in arguments:
                config.setdefault(shape_key, (None, None, 3))
                break
        backbone = cls(**config)
        source = f"backbone {name}"
    check_pyramid(backbone, source)
    if weights is not None:
        backbone.load_weights(weights)
    return backbone


@contextlib.contextmanager
def local_preset(preset):
    """Yields `preset` itself when it is a local path or a preset name, else the path of
    a local temporary copy of the preset directory (keras-hub reads local files only),
    deleted afterwards."""
    try:
        remote_dir = not storage.is_local(preset) and tf.io.gfile.isdir(preset)
    except tf.errors.OpError:  # A scheme tf.io.gfile does not know, e.g. "hf://".
        remote_dir = False
    if not remote_dir:
        yield preset
        return
    copy = tempfile.mkdtemp(prefix="vader-preset-")
    try:
        storage.copy_tree(preset, copy)
        yield copy
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def backbone_name(backbone):
    """The `BACKBONES` key describing `backbone`'s architecture, or None for others."""
    for name, (class_name, config) in BACKBONES.items():
        if type(backbone).__name__ != class_name:
            continue
        if all(_same(getattr(backbone, key, None), value) for key, value in config.items()):
            return name
    return None


def _same(a, b):
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def pyramid_model(backbone):
    """A functional model mapping images to the dict of pyramid levels P2..P5."""
    return keras.Model(
        backbone.inputs,
        {level: backbone.pyramid_outputs[level] for level in PYRAMID_LEVELS},
        name=f"{backbone.name}_pyramid",
    )


def check_pyramid(backbone, source="backbone"):
    """Checks that `backbone` yields P2..P5 at strides 4..32 on the grid of `vader_tf.ops.grid`.

    Raises:
        ValueError: naming `source` and what is wrong: a missing level, a stride, the
            offsets (in input pixels, per level) of cell centres off the grid, or
            (`GridError`) a layer whose cells `grid_offsets` cannot place.
    """
    if not isinstance(backbone, keras_hub.models.FeaturePyramidBackbone):
        raise ValueError(
            f"{source}: {type(backbone).__name__} is not a keras-hub FeaturePyramidBackbone."
        )
    missing = [level for level in PYRAMID_LEVELS if level not in backbone.pyramid_outputs]
    if missing:
        raise ValueError(
            f"{source}: pyramid outputs {sorted(backbone.pyramid_outputs)} lack {missing}."
        )
    try:
        offsets = grid_offsets(backbone)
    except GridError as error:
        raise GridError(f"{source}: {error}; cannot place its cells on the grid.") from None
    wrong = {
        level: stride
        for level, (stride, _) in offsets.items()
        if stride != PYRAMID_STRIDES[level]
    }
    if wrong:
        raise ValueError(
            f"{source}: pyramid levels have strides {wrong}; expected {PYRAMID_STRIDES}."
        )
    off_grid = {level: shift for level, (_, shift) in offsets.items() if shift != (0, 0)}
    if off_grid:
        raise ValueError(
            f"{source}: cell centres are off the grid of vader_tf.ops.grid by (y, x) "
            f"input pixels {off_grid} (a padding unlike torchvision's, e.g. 'same' on a "
            "strided layer); training would pair the wrong pixels."
        )


class GridError(ValueError):
    """The cell positions of a layer's output cannot be read from its configuration."""


def grid_offsets(backbone):
    """`{level: (stride, (dy, dx))}` for P2..P5, read from the layers of `backbone`.

    Cell `j` of a level of stride `s` is centred on input pixel `s * j + d` (in pixel
    indices, for inputs whose sides are multiples of 32); `d = 0` is the convention of
    `vader_tf.ops.grid`. Follows the functional graph from each level back to the input:
    strided convolutions and poolings move the centre by their window's centre minus
    their left padding (TensorFlow's "same" pads `max(k - s, 0) // 2` on the left),
    zero paddings by their left width, global poolings give maps without a grid, and
    branches that meet must agree. Other layers are taken to keep the grid (one with
    strides other than 1, a nested model or an upsampling is refused), and the strides
    found must agree with the shapes a 64 x 64 input gets. A custom stride-1 layer with
    a window off its centre would go unnoticed.

    Raises:
        GridError: a layer whose effect on the grid is unknown (e.g. an upsampling or a
            custom strided layer), or branches that disagree.
    """
    outputs = [backbone.pyramid_outputs[level] for level in PYRAMID_LEVELS]
    grids = {}  # id(tensor) -> its grid, filled inputs first (no recursion: deep nets).
    stack = list(outputs)
    while stack:
        tensor = stack[-1]
        if id(tensor) in grids:
            stack.pop()
            continue
        operation, node_index, _ = tensor._keras_history
        inputs = operation._inbound_nodes[node_index].input_tensors
        pending = [t for t in inputs if id(t) not in grids]
        if pending:
            stack.extend(pending)
            continue
        stack.pop()
        grids[id(tensor)] = _layer_grid(operation, [grids[id(t)] for t in inputs])

    # Layers read as stride 1 must really keep the size: compare with the shapes.
    shapes = keras.Model(backbone.inputs, outputs).compute_output_shape((1, 64, 64, 3))
    offsets = {}
    for level, output, shape in zip(PYRAMID_LEVELS, outputs, shapes):
        stride, shift = grids[id(output)]
        if stride != (64 // shape[1], 64 // shape[2]):
            raise GridError(
                f"{level} has stride {64 // shape[1]} but its layers account for {stride}: "
                "a layer changes the size in a way grid_offsets does not know"
            )
        offsets[level] = (
            stride[1] if stride[0] == stride[1] else stride,
            tuple(float(d) if d != int(d) else int(d) for d in shift),
        )
    return offsets


def _pair(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def _layer_grid(operation, inputs):
    """`((sy, sx), (dy, dx))` of `operation`'s output given its inputs' grids (None for a
    map without a grid)."""
    name = f"{type(operation).__name__} {operation.name!r}"
    if not inputs:  # The input layer.
        return (1, 1), (0, 0)
    grids = {grid for grid in inputs if grid is not None}
    if len(grids) > 1:
        raise GridError(
            f"branches meeting at {name} disagree on the grid (strides, offsets in input "
            f"pixels): {sorted(grids)}"
        )
    if not grids:
        return None
    (stride, shift), = grids
    if isinstance(
        operation, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)
    ):
        return None
    if isinstance(operation, keras.layers.ZeroPadding2D):
        left = [pad[0] for pad in operation.padding]
        return stride, tuple(d - s * p for d, s, p in zip(shift, stride, left))
    if type(operation).__name__ == "Pad":  # keras.ops.pad: [[batch], [y], [x], [channels]]
        left = [operation.pad_width[axis][0] for axis in (1, 2)]
        return stride, tuple(d - s * p for d, s, p in zip(shift, stride, left))
    windowed = (
        keras.layers.Conv2D,
        keras.layers.DepthwiseConv2D,
        keras.layers.SeparableConv2D,
        keras.layers.MaxPooling2D,
        keras.layers.AveragePooling2D,
    )
    if isinstance(operation, windowed):
        kernel = _pair(getattr(operation, "kernel_size", None) or operation.pool_size)
        steps = _pair(operation.strides)
        dilation = _pair(getattr(operation, "dilation_rate", 1))
        centres = []
        for k, step, rate in zip(kernel, steps, dilation):
            extent = rate * (k - 1)
            left = max(extent + 1 - step, 0) // 2 if operation.padding == "same" else 0
            centres.append(extent / 2 - left)
        return (
            tuple(s * step for s, step in zip(stride, steps)),
            tuple(d + s * c for d, s, c in zip(shift, stride, centres)),
        )
    if any(value != 1 for value in _pair(getattr(operation, "strides", 1))) or isinstance(
        operation,
        (
            keras.Model,
            keras.layers.UpSampling2D,
            keras.layers.Conv2DTranspose,
            keras.layers.Resizing,
        ),
    ):
        raise GridError(f"cannot tell where {name} puts its cells")
    return stride, shift
