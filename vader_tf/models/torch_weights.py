"""Converts PyTorch ResNet checkpoints (MoCo v2, torchvision, DenseCL, PixPro) to Keras.

The paper initialises VADeR from MoCo v2's ResNet-50. Those weights are PyTorch
checkpoints laid out like torchvision's ResNet v1.5, which is also the layout of our
keras-hub backbones (`vader_tf.models.backbone`), so every tensor maps one-to-one:

| torchvision                         | keras-hub `ResNetBackbone`                     |
| ----------------------------------- | ---------------------------------------------- |
| `conv1`, `bn1`                      | `conv1_conv`, `conv1_bn`                       |
| `layer{s+1}.{b}.conv{i}`, `.bn{i}`  | `stack{s}_block{b}_{i}_conv`, `..._{i}_bn`     |
| `layer{s+1}.{b}.downsample.0`, `.1` | `stack{s}_block{b}_0_conv`, `..._0_bn`         |

Convolution kernels go from OIHW to HWIO; batch-norm `weight`, `bias`, `running_mean`,
`running_var` become `gamma`, `beta`, `moving_mean`, `moving_variance` (both use
epsilon 1e-5, checked by `check_torchvision_layout`). The stride of a downsampling block
sits on its 3x3 convolution and on the 1x1 shortcut in both, with the same explicit zero
padding, so the converted backbone computes the same function as the PyTorch one.

Typical use (or the `export/convert_torch_weights.py` script):

```python
report = convert_checkpoint("moco_v2_800ep_pretrain.pth.tar", "moco_v2.weights.h5")
encoder = build_encoder(backbone="resnet50", backbone_weights="moco_v2.weights.h5")
```

PyTorch is only needed to read the checkpoint (`pip install vader-tf[torch]`);
`convert_state_dict` also accepts a dict of NumPy arrays.
"""

import dataclasses
import io
import os
import re

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from vader_tf import storage
from vader_tf.models import backbone as backbone_lib

# Batch-norm epsilon of `torch.nn.BatchNorm2d`, which torchvision's ResNet uses.
TORCH_BN_EPSILON = 1e-5

# Torch batch-norm tensor suffix for each Keras batch-norm variable.
_BN_VARIABLES = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}

# Prefix markers of the momentum ("key") encoder or another non-query copy of the
# network: a prefix containing one of these is only used when it is the only candidate.
_SECONDARY_ENCODER_MARKERS = ("encoder_k", "momentum", "target", "teacher", "ema")

# Where the network lives in a saved dict, tried in this order.
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "network")

_STEM_KEY = "conv1.weight"
_FIRST_BLOCK_KEY = "layer1.0.conv1.weight"
_BODY_KEY_PATTERN = re.compile(r"^(conv1|bn1|layer[1-4])\.")
_HEAD_KEY_PATTERN = re.compile(r"^fc\.")
_KERAS_BLOCK_LAYER = re.compile(r"^stack(\d+)_block(\d+)_(\d+)_(conv|bn)$")


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the requested backbone; nothing was written.

    Attributes:
        report: the `ConversionReport` listing what is missing or left over, when the
            mismatch was found while mapping tensors (else None).
    """

    def __init__(self, message, report=None):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass
class ConversionReport:
    """What a conversion used and left out.

    Attributes:
        backbone: the `BACKBONE_CONFIGS` name converted to, e.g. "resnet50".
        prefix: the key prefix of the backbone inside the checkpoint (e.g.
            "module.encoder_q."), "" for a plain torchvision `state_dict`.
        mapped: `(torch_key, keras_variable_path)` pairs that were copied.
        ignored: checkpoint keys deliberately not used, mapped to the reason (the
            projection head, the momentum encoder, the queue, `num_batches_tracked`...).
        unmapped: checkpoint keys of the backbone body that match none of our tensors.
        missing: torch keys our backbone needs and the checkpoint lacks.
        shape_mismatches: `(torch_key, checkpoint_shape, expected_torch_shape)` triples.
        detected_architecture: what the backbone keys look like, e.g. "resnet18", or a
            description of the blocks when no known architecture matches.
    """

    backbone: str
    prefix: str = ""
    mapped: list = dataclasses.field(default_factory=list)
    ignored: dict = dataclasses.field(default_factory=dict)
    unmapped: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)
    shape_mismatches: list = dataclasses.field(default_factory=list)
    detected_architecture: str = ""

    @property
    def ok(self):
        """Whether every backbone tensor was found with the right shape and none is left."""
        return not (self.missing or self.unmapped or self.shape_mismatches)

    def summary(self):
        """A multi-line, human-readable account (long name lists are grouped)."""
        lines = [
            f"backbone: {self.backbone} (checkpoint looks like: "
            f"{self.detected_architecture or 'unknown'})",
            f"checkpoint prefix: {self.prefix!r}",
            f"mapped tensors: {len(self.mapped)}",
            f"ignored checkpoint entries: {len(self.ignored)}",
        ]
        lines += [f"  {line}" for line in _group_by_reason(self.ignored)]
        lines.append(f"unmapped checkpoint tensors: {len(self.unmapped)}")
        lines += [f"  {name}" for name in self.unmapped]
        lines.append(f"missing tensors: {len(self.missing)}")
        lines += [f"  {name}" for name in self.missing]
        if self.shape_mismatches:
            lines.append(f"shape mismatches: {len(self.shape_mismatches)}")
            lines += [
                f"  {name}: checkpoint {tuple(got)}, expected {tuple(want)}"
                for name, got, want in self.shape_mismatches
            ]
        return "\n".join(lines)


def _group_by_reason(ignored):
    """Lines "reason: n entries (first, second, ...)" for a `{key: reason}` dict."""
    by_reason = {}
    for key, reason in ignored.items():
        by_reason.setdefault(reason, []).append(key)
    lines = []
    for reason, keys in by_reason.items():
        shown = ", ".join(keys[:4]) + (", ..." if len(keys) > 4 else "")
        lines.append(f"{reason}: {len(keys)} ({shown})")
    return lines


def _import_torch():
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise ImportError(
            "Reading PyTorch checkpoints needs PyTorch: `pip install vader-tf[torch]` "
            "(or `pip install torch`)."
        ) from error
    return torch


def load_torch_checkpoint(path, allow_pickle=False):
    """Reads a PyTorch checkpoint file into a dict of NumPy arrays.

    Finds the network in the saved object (`{"state_dict": ...}`, `{"model": ...}` or a
    bare state dict) and flattens nested dicts with "." separators. Only tensors are
    kept: bookkeeping such as `epoch`, `arch` or the optimizer state is dropped.

    Args:
        path: a `.pth` / `.pth.tar` / `.pt` file written by `torch.save`.
        allow_pickle: also load checkpoints that hold arbitrary Python objects (e.g.
            mmcv metadata). This runs the pickled code, so only set it for files you
            trust. By default the file is read with `torch.load(weights_only=True)`.

    Returns:
        A dict from key to float32 (or integer, for counters) NumPy array.
    """
    torch = _import_torch()
    try:
        checkpoint = torch.load(
            io.BytesIO(storage.read_bytes(path)),
            map_location="cpu",
            weights_only=not allow_pickle,
        )
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, ...
        if allow_pickle:
            raise
        raise ValueError(
            f"Could not read {path} as a weights-only PyTorch checkpoint ({error}). If the "
            "file holds other Python objects and you trust it, retry with "
            "allow_pickle=True (--allow_pickle in the script)."
        ) from error
    state_dict = find_state_dict(checkpoint)
    arrays = {}
    for key, value in _flatten(state_dict).items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.is_floating_point():
                value = value.float()
            arrays[key] = value.numpy()
    if not arrays:
        raise ValueError(f"{path} holds no tensors.")
    return arrays


def find_state_dict(checkpoint):
    """The network's state dict inside a loaded checkpoint object.

    Looks under "state_dict", "model", "model_state_dict" and "network", in this order,
    and otherwise takes the dict itself (a bare `state_dict`).
    """
    if not isinstance(checkpoint, dict):
        # A whole pickled `nn.Module`.
        if hasattr(checkpoint, "state_dict"):
            return checkpoint.state_dict()
        raise ValueError(f"Unsupported checkpoint object of type {type(checkpoint)}.")
    for key in _STATE_DICT_KEYS:
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def find_backbone_prefix(keys):
    """The prefix under which a ResNet body (conv1, bn1, layer1..4) sits in `keys`.

    Candidates are the prefixes `p` with both `p + "conv1.weight"` and
    `p + "layer1.0.conv1.weight"` present: "" (torchvision), "module.encoder_q."
    (MoCo), "backbone." (DenseCL / mmcv), "module.encoder.", "encoder_q.0.", ... When
    several copies exist (query and momentum encoders, online and target networks) the
    only one without a momentum marker ("encoder_k", "target", "ema", ...) wins.

    Raises:
        CheckpointMismatchError: when no ResNet body, or several equally good ones, exist.
    """
    keys = set(keys)
    candidates = [
        key[: -len(_FIRST_BLOCK_KEY)]
        for key in keys
        if key.endswith(_FIRST_BLOCK_KEY)
        and key[: -len(_FIRST_BLOCK_KEY)] + _STEM_KEY in keys
    ]
    candidates = [c for c in candidates if c == "" or c.endswith(".")]
    if not candidates:
        raise CheckpointMismatchError(
            "No ResNet backbone in the checkpoint: expected keys like 'conv1.weight' and "
            f"'layer1.0.conv1.weight' (with any prefix). First keys: {sorted(keys)[:8]}"
        )

    def is_secondary(prefix):
        return any(marker in prefix for marker in _SECONDARY_ENCODER_MARKERS)

    candidates.sort(key=is_secondary)
    if len(candidates) > 1 and is_secondary(candidates[0]) == is_secondary(candidates[1]):
        raise CheckpointMismatchError(
            f"Several ResNet backbones in the checkpoint: {candidates}; pass the one to "
            "use as `prefix`."
        )
    return candidates[0]


def describe_architecture(body_keys):
    """Names the ResNet that un-prefixed torchvision `body_keys` describe, if known."""
    blocks = [
        len({key.split(".")[1] for key in body_keys if key.startswith(f"layer{i}.")})
        for i in range(1, 5)
    ]
    bottleneck = any(".conv3." in key for key in body_keys)
    block_type = "bottleneck_block" if bottleneck else "basic_block"
    for name, config in backbone_lib.BACKBONE_CONFIGS.items():
        if config["stackwise_num_blocks"] == blocks and config["block_type"] == block_type:
            return name
    return f"{block_type}s {blocks}"


def torch_key_prefix(keras_layer_name):
    """The torchvision module name of a keras-hub ResNet conv or BN layer, or None."""
    if keras_layer_name == "conv1_conv":
        return "conv1"
    if keras_layer_name == "conv1_bn":
        return "bn1"
    match = _KERAS_BLOCK_LAYER.match(keras_layer_name)
    if match is None:
        return None
    stack, block, index, kind = match.groups()
    module = f"layer{int(stack) + 1}.{block}"
    if index == "0":  # The projection shortcut.
        return f"{module}.downsample.{0 if kind == 'conv' else 1}"
    return f"{module}.{kind}{index}"


def check_torchvision_layout(backbone):
    """Checks that `backbone` computes what torchvision's ResNet v1.5 computes.

    Verifies the facts the one-to-one mapping relies on: post-activation blocks of the
    plain (non-"vd") kind, batch-norm epsilon 1e-5, and the stride of each downsampling
    bottleneck on its 3x3 convolution (never its first 1x1 one, as in ResNet v1).

    Raises:
        ValueError: naming the first difference found.
    """
    if backbone.use_pre_activation or backbone.block_type not in (
        "basic_block",
        "bottleneck_block",
    ):
        raise ValueError(
            "Only ResNet v1.5 backbones (use_pre_activation=False, block_type "
            f"basic_block or bottleneck_block) map onto torchvision; got "
            f"use_pre_activation={backbone.use_pre_activation}, "
            f"block_type={backbone.block_type!r}."
        )
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            if not np.isclose(layer.epsilon, TORCH_BN_EPSILON, rtol=0, atol=1e-12):
                raise ValueError(
                    f"{layer.name} has epsilon {layer.epsilon}, torch uses "
                    f"{TORCH_BN_EPSILON}."
                )
        if isinstance(layer, keras.layers.Conv2D):
            match = _KERAS_BLOCK_LAYER.match(layer.name)
            if match and backbone.block_type == "bottleneck_block":
                if match.group(3) in ("1", "3") and tuple(layer.strides) != (1, 1):
                    raise ValueError(
                        f"{layer.name} has strides {layer.strides}: a ResNet v1 layout, "
                        "torchvision (v1.5) puts the stride on the 3x3 convolution."
                    )


def _expected_tensors(backbone):
    """`{torch_key: (keras_variable, to_keras)}` for every variable of `backbone`."""
    expected = {}
    for layer in backbone.layers:
        module = torch_key_prefix(layer.name)
        if isinstance(layer, keras.layers.Conv2D):
            if module is None or layer.use_bias:
                raise ValueError(f"No torchvision counterpart for layer {layer.name}.")
            expected[f"{module}.weight"] = (layer.kernel, _oihw_to_hwio)
        elif isinstance(layer, keras.layers.BatchNormalization):
            if module is None:
                raise ValueError(f"No torchvision counterpart for layer {layer.name}.")
            for keras_name, torch_name in _BN_VARIABLES.items():
                expected[f"{module}.{torch_name}"] = (getattr(layer, keras_name), None)
        elif layer.weights:
            raise ValueError(f"No torchvision counterpart for layer {layer.name}.")
    return expected


def _oihw_to_hwio(kernel):
    return np.transpose(kernel, (2, 3, 1, 0))


def _torch_shape(variable, to_keras):
    shape = tuple(variable.shape)
    if to_keras is _oihw_to_hwio:
        height, width, in_channels, out_channels = shape
        return (out_channels, in_channels, height, width)
    return shape


def convert_state_dict(state_dict, backbone="resnet50", prefix=None):
    """Builds a Keras backbone holding the weights of a PyTorch ResNet state dict.

    Args:
        state_dict: dict from checkpoint key to tensor (NumPy arrays, or anything
            `np.asarray` accepts), e.g. from `load_torch_checkpoint`.
        backbone: a `BACKBONE_CONFIGS` name ("resnet18", "resnet34", "resnet50",
            "resnet101").
        prefix: the key prefix of the backbone; found by `find_backbone_prefix` when
            None. Entries outside it are ignored (and reported as such).

    Returns:
        `(keras_backbone, report)`: a `ResNetBackbone` from `build_backbone(backbone)`
        with all its variables set, and a `ConversionReport`.

    Raises:
        CheckpointMismatchError: when a tensor of our backbone is missing, a backbone
            tensor of the checkpoint is left over, or a shape differs. The message holds
            `report.summary()`, its `report` attribute the report itself.
    """
    if backbone not in backbone_lib.BACKBONE_CONFIGS:
        raise ValueError(
            f"Torch weights convert to ResNet backbones only: backbone={backbone!r} is not "
            f"one of {sorted(backbone_lib.BACKBONE_CONFIGS)}."
        )
    keras_backbone = backbone_lib.build_backbone(backbone)
    check_torchvision_layout(keras_backbone)
    if prefix is None:
        prefix = find_backbone_prefix(state_dict)
    report = ConversionReport(backbone=backbone, prefix=prefix)

    body = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            report.ignored[key] = f"outside the backbone prefix {prefix!r}"
            continue
        name = key[len(prefix) :]
        if _HEAD_KEY_PATTERN.match(name):
            report.ignored[key] = "classifier / projection head (fc)"
        elif name.endswith("num_batches_tracked"):
            report.ignored[key] = "batch-norm counter (num_batches_tracked)"
        elif _BODY_KEY_PATTERN.match(name):
            body[name] = value
        else:
            report.ignored[key] = "not part of the ResNet body"
    report.detected_architecture = describe_architecture(body)

    expected = _expected_tensors(keras_backbone)
    report.missing = [prefix + name for name in expected if name not in body]
    report.unmapped = [prefix + name for name in body if name not in expected]
    assignments = []
    for name, (variable, to_keras) in expected.items():
        if name not in body:
            continue
        value = np.asarray(body[name], dtype="float32")
        want = _torch_shape(variable, to_keras)
        if value.shape != want:
            report.shape_mismatches.append((prefix + name, value.shape, want))
            continue
        assignments.append((variable, to_keras(value) if to_keras else value))
        report.mapped.append((prefix + name, variable.path))

    if not report.ok:
        raise CheckpointMismatchError(
            f"The checkpoint does not fit {backbone}:\n{report.summary()}", report
        )
    for variable, value in assignments:
        variable.assign(value)
    return keras_backbone, report


def save_backbone_weights(keras_backbone, output_path):
    """Writes `keras_backbone.save_weights` to `output_path` atomically.

    The weights go to a temporary `*.tmp-<pid>.weights.h5` beside `output_path` that is
    renamed into place (see `vader_tf.storage`), so a failed write never leaves a partial
    file under the final name. `output_path` may be on any `tf.io.gfile` filesystem.
    """
    if not output_path.endswith(".weights.h5"):
        raise ValueError(f"Output must end with '.weights.h5', got {output_path!r}.")
    storage.makedirs(os.path.dirname(output_path))
    temp_path = storage.temporary_name(output_path[: -len(".weights.h5")], ".weights.h5")
    try:
        keras_backbone.save_weights(temp_path)
        tf.io.gfile.rename(temp_path, output_path, overwrite=True)
    finally:
        if tf.io.gfile.exists(temp_path):
            tf.io.gfile.remove(temp_path)


def convert_checkpoint(
    checkpoint_path, output_path, backbone="resnet50", prefix=None, allow_pickle=False
):
    """Converts a PyTorch ResNet checkpoint file to Keras backbone weights.

    The result loads with `build_backbone(backbone, weights=output_path)` and
    `build_encoder(backbone=backbone, backbone_weights=output_path)`. Nothing is
    written unless every tensor of the backbone was found with the right shape.

    Args:
        checkpoint_path: a MoCo v2 / torchvision / DenseCL / PixPro checkpoint.
        output_path: where to write the weights; must end with ".weights.h5".
        backbone: the `BACKBONE_CONFIGS` name of the architecture.
        prefix: the backbone's key prefix in the checkpoint (found when None).
        allow_pickle: see `load_torch_checkpoint`.

    Returns:
        The `ConversionReport`.

    Raises:
        CheckpointMismatchError: see `convert_state_dict`.
    """
    state_dict = load_torch_checkpoint(checkpoint_path, allow_pickle=allow_pickle)
    keras_backbone, report = convert_state_dict(state_dict, backbone=backbone, prefix=prefix)
    save_backbone_weights(keras_backbone, output_path)
    logging.info(
        "Converted %d tensors of %s (prefix %r) to %s; ignored %d entries.",
        len(report.mapped),
        checkpoint_path,
        report.prefix,
        output_path,
        len(report.ignored),
    )
    return report
