"""Tests of `vader_tf.models.torch_weights` against a torchvision-layout ResNet in torch."""

import importlib.util
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vader_tf.models import backbone as backbone_lib  # noqa: E402
from vader_tf.models import encoder as encoder_lib  # noqa: E402
from vader_tf.models import torch_weights  # noqa: E402

nn = torch.nn

# Max |keras - torch| over a level, divided by that level's max |torch| activation.
# Measured: at most 3.1e-6 for ResNet-50 (C2..C5, 64x64 to 224x224 inputs), float32
# round-off from different summation orders; a mapping error gives O(1) or NaN.
RELATIVE_TOLERANCE = 1e-4


class Bottleneck(nn.Module):
    """torchvision's `Bottleneck`: the stride on the 3x3 convolution (ResNet v1.5)."""

    expansion = 4

    def __init__(self, in_channels, width, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class BasicBlock(nn.Module):
    """torchvision's `BasicBlock` (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels, width, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ReferenceResNet(nn.Module):
    """A ResNet with torchvision's module names; `forward` returns C2..C5 (NCHW)."""

    def __init__(self, block, num_blocks, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, (width, blocks) in enumerate(zip((64, 128, 256, 512), num_blocks)):
            stride = 1 if index == 0 else 2
            downsample = None
            if stride != 1 or in_channels != width * block.expansion:
                downsample = nn.Sequential(
                    nn.Conv2d(in_channels, width * block.expansion, 1, stride, bias=False),
                    nn.BatchNorm2d(width * block.expansion),
                )
            layers = [block(in_channels, width, stride, downsample)]
            in_channels = width * block.expansion
            layers += [block(in_channels, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        levels = []
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
            levels.append(x)
        return levels


def _reference_model(block, num_blocks, seed=0):
    """A random eval-mode model with randomised BN statistics and affine parameters."""
    torch.manual_seed(seed)
    model = ReferenceResNet(block, num_blocks)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                # Variance-preserving init keeps activations O(1) through all blocks.
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if isinstance(module, nn.BatchNorm2d):
                channels = module.num_features
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(channels)
    return model.eval()


def _resnet50():
    return _reference_model(Bottleneck, [3, 4, 6, 3])


@pytest.fixture(scope="module")
def resnet50_reference():
    return _resnet50()


def _moco_checkpoint(model):
    """A MoCo v2-style checkpoint: `module.encoder_q.` + MLP head, key encoder, queue."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("fc."):
            continue
        state[f"module.encoder_q.{key}"] = value
        if key.startswith(("conv1", "layer1.0")):
            state[f"module.encoder_k.{key}"] = value.clone()
    state["module.encoder_q.fc.0.weight"] = torch.randn(2048, 2048)
    state["module.encoder_q.fc.0.bias"] = torch.randn(2048)
    state["module.encoder_q.fc.2.weight"] = torch.randn(128, 2048)
    state["module.encoder_q.fc.2.bias"] = torch.randn(128)
    state["module.queue"] = torch.randn(128, 16)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {"epoch": 200, "arch": "resnet50", "state_dict": state}


def _max_relative_errors(model, keras_backbone, input_shapes):
    pyramid = backbone_lib.pyramid_model(keras_backbone)
    rng = np.random.default_rng(0)
    errors = []
    for height, width in input_shapes:
        images = rng.normal(size=(2, height, width, 3)).astype("float32")
        with torch.no_grad():
            expected = model(torch.from_numpy(images.transpose(0, 3, 1, 2)))
        actual = pyramid([images], training=False)
        for level, torch_level in zip(backbone_lib.PYRAMID_LEVELS, expected):
            want = torch_level.numpy().transpose(0, 2, 3, 1)
            got = np.asarray(actual[level])
            assert got.shape == want.shape, (level, got.shape, want.shape)
            scale = np.abs(want).max()
            assert scale > 1e-2, f"{level} activations collapsed"
            errors.append(np.abs(got - want).max() / scale)
    return errors


def test_moco_checkpoint_converts_and_matches_torch(resnet50_reference, tmp_path):
    checkpoint = tmp_path / "moco_v2.pth.tar"
    torch.save(_moco_checkpoint(resnet50_reference), checkpoint)
    output = tmp_path / "moco_v2.weights.h5"

    report = torch_weights.convert_checkpoint(str(checkpoint), str(output))

    assert report.prefix == "module.encoder_q."
    assert report.detected_architecture == "resnet50"
    assert len(report.mapped) == 265  # 53 convolutions + 53 BNs x 4.
    assert report.ignored["module.encoder_q.fc.0.weight"].startswith("classifier")
    assert "module.queue" in report.ignored
    assert "module.encoder_k.conv1.weight" in report.ignored
    assert not report.missing and not report.unmapped
    assert "mapped tensors: 265" in report.summary()
    assert sorted(os.listdir(tmp_path)) == ["moco_v2.pth.tar", "moco_v2.weights.h5"]

    keras_backbone = backbone_lib.build_backbone("resnet50", weights=str(output))
    errors = _max_relative_errors(
        resnet50_reference, keras_backbone, [(64, 64), (96, 128)]
    )
    assert max(errors) < RELATIVE_TOLERANCE, errors


@pytest.mark.parametrize("wrapper", ["plain", "state_dict", "model", "backbone."])
def test_torchvision_and_densecl_layouts(resnet50_reference, wrapper):
    state = resnet50_reference.state_dict()
    arrays = {key: value.numpy() for key, value in state.items()}
    if wrapper == "backbone.":  # DenseCL / mmcv: backbone, neck and head modules.
        arrays = {f"backbone.{key}": value for key, value in arrays.items()}
        arrays["neck.mlp.0.weight"] = np.zeros((4, 4), "float32")
    if wrapper in ("state_dict", "model"):
        arrays = torch_weights.find_state_dict({wrapper: arrays, "epoch": 3})

    keras_backbone, report = torch_weights.convert_state_dict(arrays)

    assert report.prefix == ("backbone." if wrapper == "backbone." else "")
    assert len(report.mapped) == 265
    kernel = keras_backbone.get_layer("stack1_block0_0_conv").kernel
    np.testing.assert_array_equal(
        np.asarray(kernel), state["layer2.0.downsample.0.weight"].numpy().transpose(2, 3, 1, 0)
    )
    bn = keras_backbone.get_layer("stack3_block2_3_bn")
    np.testing.assert_array_equal(
        np.asarray(bn.moving_variance), state["layer4.2.bn3.running_var"].numpy()
    )


def test_find_backbone_prefix_prefers_query_encoder():
    keys = [
        f"{prefix}{name}"
        for prefix in ("module.encoder_k.", "module.encoder.", "encoder_q.0.")
        for name in ("conv1.weight", "layer1.0.conv1.weight")
    ]
    assert torch_weights.find_backbone_prefix(keys[:4]) == "module.encoder."
    assert torch_weights.find_backbone_prefix(keys[:2] + keys[4:]) == "encoder_q.0."
    with pytest.raises(torch_weights.CheckpointMismatchError, match="Several"):
        torch_weights.find_backbone_prefix(keys[2:])
    with pytest.raises(torch_weights.CheckpointMismatchError, match="No ResNet"):
        torch_weights.find_backbone_prefix(["fc.weight"])


def test_resnet18_checkpoint_for_resnet50_fails_and_writes_nothing(tmp_path):
    checkpoint = tmp_path / "resnet18.pth"
    torch.save(_reference_model(BasicBlock, [2, 2, 2, 2]).state_dict(), checkpoint)
    output = tmp_path / "out.weights.h5"

    with pytest.raises(torch_weights.CheckpointMismatchError) as raised:
        torch_weights.convert_checkpoint(str(checkpoint), str(output), backbone="resnet50")

    message = str(raised.value)
    assert "looks like: resnet18" in message
    assert "layer1.0.conv3.weight" in message  # A missing tensor, by name.
    assert raised.value.report.missing and raised.value.report.shape_mismatches
    assert os.listdir(tmp_path) == ["resnet18.pth"]


def test_truncated_checkpoint_fails_and_writes_nothing(resnet50_reference, tmp_path):
    state = dict(resnet50_reference.state_dict())
    del state["layer4.2.bn3.running_var"]
    state["layer3.0.conv2.weight"] = state["layer3.0.conv2.weight"][:, :10]
    checkpoint = tmp_path / "truncated.pth"
    torch.save({"state_dict": state}, checkpoint)

    with pytest.raises(torch_weights.CheckpointMismatchError) as raised:
        torch_weights.convert_checkpoint(str(checkpoint), str(tmp_path / "out.weights.h5"))

    report = raised.value.report
    assert report.missing == ["layer4.2.bn3.running_var"]
    assert report.shape_mismatches == [
        ("layer3.0.conv2.weight", (256, 10, 3, 3), (256, 256, 3, 3))
    ]
    assert os.listdir(tmp_path) == ["truncated.pth"]


def test_resnet18_converts_and_matches_torch(tmp_path):
    model = _reference_model(BasicBlock, [2, 2, 2, 2], seed=1)
    keras_backbone, report = torch_weights.convert_state_dict(
        {key: value.numpy() for key, value in model.state_dict().items()},
        backbone="resnet18",
    )
    assert report.detected_architecture == "resnet18"
    errors = _max_relative_errors(model, keras_backbone, [(64, 96)])
    assert max(errors) < RELATIVE_TOLERANCE, errors


def test_converted_weights_load_into_encoder(resnet50_reference, tmp_path):
    arrays = {key: value.numpy() for key, value in resnet50_reference.state_dict().items()}
    keras_backbone, _ = torch_weights.convert_state_dict(arrays)
    output = str(tmp_path / "resnet50.weights.h5")
    torch_weights.save_backbone_weights(keras_backbone, output)

    encoder = encoder_lib.build_encoder(backbone="resnet50", backbone_weights=output)

    np.testing.assert_array_equal(
        np.asarray(encoder.backbone.get_layer("conv1_conv").kernel),
        arrays["conv1.weight"].transpose(2, 3, 1, 0),
    )
    features = encoder(np.zeros((1, 64, 64, 3), "float32"))
    assert features.shape == (1, 16, 16, 128)


def test_local_keras_hub_preset_round_trip(tmp_path):
    original = backbone_lib.build_backbone("resnet18")
    original.save_to_preset(str(tmp_path / "preset"))

    loaded = backbone_lib.build_backbone(preset=str(tmp_path / "preset"))

    images = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype("float32")
    want = backbone_lib.pyramid_model(original)([images])
    got = backbone_lib.pyramid_model(loaded)([images])
    for level in backbone_lib.PYRAMID_LEVELS:
        np.testing.assert_allclose(np.asarray(got[level]), np.asarray(want[level]), atol=1e-6)


@pytest.fixture
def convert_script():
    """The `export/convert_torch_weights.py` module, its flags reset afterwards."""
    from absl import flags  # pylint: disable=import-outside-toplevel

    path = os.path.join(
        os.path.dirname(__file__), "..", "..", "export", "convert_torch_weights.py"
    )
    spec = importlib.util.spec_from_file_location("convert_torch_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield lambda *args: (flags.FLAGS(["convert_torch_weights", *args]), module.main([]))[1]
    for name in ("checkpoint", "output", "backbone", "prefix", "allow_pickle"):
        delattr(flags.FLAGS, name)


def test_convert_script(resnet50_reference, tmp_path, capsys, convert_script):
    checkpoint = tmp_path / "moco.pth.tar"
    torch.save(_moco_checkpoint(resnet50_reference), checkpoint)
    output = tmp_path / "moco.weights.h5"

    assert convert_script(f"--checkpoint={checkpoint}", f"--output={output}") == 0
    printed = capsys.readouterr().out
    assert "mapped tensors: 265" in printed
    assert "classifier / projection head (fc): 4" in printed
    assert "missing tensors: 0" in printed
    assert output.exists()

    wrong = tmp_path / "wrong.weights.h5"
    args = (f"--checkpoint={checkpoint}", f"--output={wrong}", "--backbone=resnet101")
    assert convert_script(*args) == 1
    assert "layer3.22.conv1.weight" in capsys.readouterr().err
    assert not wrong.exists()


class _Metadata:
    """A non-tensor object in a checkpoint, as mmcv stores (needs full unpickling)."""


def test_checkpoint_with_python_objects_needs_allow_pickle(tmp_path):
    checkpoint = tmp_path / "mmcv.pth"
    torch.save({"meta": _Metadata(), "state_dict": {"conv1.weight": torch.ones(2)}}, checkpoint)

    with pytest.raises(ValueError, match="allow_pickle=True"):
        torch_weights.load_torch_checkpoint(str(checkpoint))
    arrays = torch_weights.load_torch_checkpoint(str(checkpoint), allow_pickle=True)
    assert list(arrays) == ["conv1.weight"]


def test_missing_torch_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"vader-tf\[torch\]"):
        torch_weights.load_torch_checkpoint("unused.pth")


def test_pretraining_starts_from_converted_moco_checkpoint(resnet50_reference, tmp_path):
    from vader_tf.training.pretrain import PretrainConfig, build_model

    checkpoint = str(tmp_path / "moco_v2_800ep_pretrain.pth.tar")
    torch.save(_moco_checkpoint(resnet50_reference), checkpoint)
    converted = str(tmp_path / "moco_v2.weights.h5")
    torch_weights.convert_checkpoint(checkpoint, converted)

    model = build_model(
        PretrainConfig(model_dir=str(tmp_path / "run"), backbone="resnet50", init_weights=converted)
    )
    expected = resnet50_reference.state_dict()["layer4.2.conv3.weight"].numpy().transpose(2, 3, 1, 0)
    for encoder in (model.encoder, model.key_model):
        kernel = encoder.backbone.get_layer("stack3_block2_3_conv").kernel
        np.testing.assert_array_equal(np.asarray(kernel), expected)
