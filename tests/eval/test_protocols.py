"""Each evaluation protocol is declared once: its dataclass generates the script's flags
with its defaults, and the evaluation functions default to it."""

import dataclasses
import inspect

import pytest
from absl import flags

from vader_tf.config_flags import define_flags, from_flags, to_argv
from vader_tf.eval import correspondence, davis, depth, finetune, linear_probe, protocols
from vader_tf.eval.reporting import to_json_value

# The values the protocols had as script flags before they were declared once (and the
# values the results in RESULTS.md were computed with, where the study did not shrink them).
EXPECTED_DEFAULTS = {
    protocols.DavisProtocol: dict(
        image_size=480, context_frames=3, topk=10, temperature=0.07, radius=12.0
    ),
    protocols.CorrespondenceProtocol: dict(
        image_size=256, thresholds=(4, 8, 16, 32), warps_per_image=1, min_scale=0.6,
        perspective=0.15, point_stride=2,
    ),
    protocols.CamVidProbeProtocol: dict(
        image_size=224, steps=2000, batch_size=4096, learning_rate=1e-2,
        pixels_per_image=1000, num_classes=11, ignore_label=11,
    ),
    protocols.DepthProtocol: dict(
        image_size=224, steps=2000, batch_size=4096, learning_rate=1e-2, pixels_per_image=1000
    ),
    protocols.FinetuneProtocol: dict(
        num_classes=11, ignore_label=11, image_size=224, steps=1000, batch_size=8,
        learning_rate=1e-3, head_channels=64,
    ),
}


@pytest.mark.parametrize("protocol_class", protocols.PROTOCOLS, ids=lambda c: c.__name__)
def test_generated_flags_have_the_protocol_defaults(protocol_class):
    values = flags.FlagValues()
    define_flags(protocol_class, flag_values=values)
    values(["prog"])
    assert from_flags(protocol_class, values) == protocol_class()
    assert dataclasses.asdict(protocol_class()) == EXPECTED_DEFAULTS[protocol_class]
    for field in dataclasses.fields(protocol_class):
        assert values[field.name].help == field.metadata["help"]
        assert values[field.name].help, f"{protocol_class.__name__}.{field.name} has no help"


@pytest.mark.parametrize("protocol_class", protocols.PROTOCOLS, ids=lambda c: c.__name__)
def test_changed_flags_round_trip(protocol_class):
    changed = {}
    for field in dataclasses.fields(protocol_class):
        value = field.default
        if isinstance(value, tuple):
            changed[field.name] = (3.0, 7.5)
        else:
            changed[field.name] = value * 2 + 1 if field.type is int else value / 2
    protocol = protocol_class(**changed)
    values = flags.FlagValues()
    define_flags(protocol_class, flag_values=values)
    values(["prog", *to_argv(protocol)])
    assert from_flags(protocol_class, values) == protocol


@pytest.mark.parametrize(
    "function, protocol_class",
    [
        (davis.evaluate_davis, protocols.DavisProtocol),
        (davis.evaluate_sequence, protocols.DavisProtocol),
        (correspondence.evaluate_correspondence, protocols.CorrespondenceProtocol),
        (linear_probe.run_linear_probe, protocols.CamVidProbeProtocol),
        (depth.run_depth_probe, protocols.DepthProtocol),
        (finetune.finetune_segmentation, protocols.FinetuneProtocol),
        (finetune.build_segmentation_model, protocols.FinetuneProtocol),
    ],
)
def test_functions_take_the_protocol_and_repeat_none_of_its_settings(function, protocol_class):
    parameters = inspect.signature(function).parameters
    assert parameters["protocol"].default == protocol_class()
    fields = {field.name for field in dataclasses.fields(protocol_class)}
    assert not fields & set(parameters), "a protocol setting is also a separate argument"


def test_record_is_json_and_names_the_protocol():
    protocol = protocols.CorrespondenceProtocol(thresholds=(2.5, 8.0))
    record = to_json_value(protocols.record(protocol))
    assert record["name"] == "CorrespondenceProtocol"
    assert record["thresholds"] == [2.5, 8.0]
    assert set(record) == {"name"} | {f.name for f in dataclasses.fields(protocol)}


@pytest.mark.parametrize(
    "protocol_class, changes, flag",
    [
        (protocols.DavisProtocol, dict(topk=0), "--topk"),
        (protocols.DavisProtocol, dict(context_frames=-1), "--context_frames"),
        (protocols.CorrespondenceProtocol, dict(perspective=-0.1), "--perspective"),
        (protocols.CorrespondenceProtocol, dict(min_scale=1.5), "--min_scale"),
        (protocols.CorrespondenceProtocol, dict(thresholds=()), "--thresholds"),
        (protocols.CamVidProbeProtocol, dict(steps=0), "--steps"),
        (protocols.DepthProtocol, dict(pixels_per_image=-1), "--pixels_per_image"),
        (protocols.FinetuneProtocol, dict(batch_size=0), "--batch_size"),
    ],
)
def test_bad_values_name_the_flag(protocol_class, changes, flag):
    with pytest.raises(ValueError, match=flag):
        protocol_class(**changes)


def test_radius_zero_means_unrestricted():
    assert protocols.DavisProtocol(radius=0).search_radius is None
    assert protocols.DavisProtocol().search_radius == 12.0
