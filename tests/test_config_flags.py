"""Typed configs generate their flags: names, types, defaults, help, and the way back."""

import dataclasses

import pytest
from absl import flags

from vader_tf.config_flags import (
    define_flags,
    from_flags,
    inherited_option,
    option,
    section_fields,
    to_argv,
)
from vader_tf.training import pretrain
from vader_tf.training.pretrain import PretrainConfig


@dataclasses.dataclass
class _Config:
    name: str = option("a", "A name.")
    count: int = option(3, "A count.")
    rate: float = option(0.5, "A rate.")
    on: bool = option(False, "A switch.")
    path: str | None = option(None, "An optional path.")
    seeds: tuple[int, ...] = option((0, 1), "Seeds.")
    plain: int = 7
    scales: tuple[float, ...] = option((0.5, 2.0), "Scales.")


def _parse(*argv):
    values = flags.FlagValues()
    define_flags(_Config, flag_values=values)
    values(["prog", *argv])
    return values


def test_defaults_round_trip():
    values = _parse()
    assert from_flags(_Config, values) == _Config()
    assert values["count"].help == "A count."
    assert values["plain"].help == "See _Config.plain."


def test_parsed_values_have_the_field_types():
    values = _parse(
        "--name=b", "--count=4", "--rate=0.25", "--on", "--path=/x", "--seeds=5,6,7",
        "--scales=1.5,3",
    )
    config = from_flags(_Config, values)
    assert config == _Config("b", 4, 0.25, True, "/x", (5, 6, 7), 7, (1.5, 3.0))
    assert isinstance(config.seeds, tuple) and all(isinstance(s, int) for s in config.seeds)
    assert all(isinstance(s, float) for s in config.scales)


def test_to_argv_rebuilds_the_config():
    config = _Config("b", 4, 0.1 + 0.2, True, None, (5, 6), 8, (1e-7, 2.5))
    argv = to_argv(config)
    assert "--seeds=5,6" in argv and not any(a.startswith("--path") for a in argv)
    assert from_flags(_Config, _parse(*argv)) == config
    assert to_argv(config, ["count", "on"]) == ["--count=4", "--on=True"]


def test_bad_list_item_names_the_flag():
    with pytest.raises(ValueError, match="--seeds must be a comma-separated list of int"):
        from_flags(_Config, _parse("--seeds=1,x"))


def test_every_pretrain_field_has_help_and_a_flag():
    values = flags.FlagValues()
    define_flags(PretrainConfig, flag_values=values)
    for field in dataclasses.fields(PretrainConfig):
        assert field.metadata.get("help"), f"PretrainConfig.{field.name} has no help text"
        assert values[field.name].default == field.default
    values(["prog"])
    assert from_flags(PretrainConfig, values) == PretrainConfig()


def test_section_fields_in_declaration_order():
    @dataclasses.dataclass
    class Sectioned:
        b: int = option(1, "B.", section="one")
        a: int = option(2, "A.", section="two")
        c: int = option(3, "C.", section="one")
        d: int = option(4, "D.")

    assert section_fields(Sectioned, "one") == ("b", "c")
    assert section_fields(Sectioned, "two") == ("a",)
    assert section_fields(Sectioned, "three") == ()


def test_every_pretrain_field_is_in_one_section_and_runtime_is_what_may_resume():
    sections = {
        field.name: field.metadata.get("section") for field in dataclasses.fields(PretrainConfig)
    }
    unsectioned = [name for name, section in sections.items() if section not in pretrain.SECTIONS]
    assert not unsectioned, f"PretrainConfig fields outside {pretrain.SECTIONS}: {unsectioned}"
    # Written out, not derived: moving a field that shapes the model, its optimiser state
    # or the data stream into `runtime` would let a resumed run silently change it.
    assert set(pretrain.RESUMABLE_FIELDS) == {
        "model_dir", "train_steps", "checkpoint_every", "log_every", "keep_checkpoints",
        "verbose", "strategy", "num_cpu_devices", "deterministic", "cache_decoded_mb",
        "image_summary_every", "jit_compile",
    }
    assert pretrain.RESUMABLE_FIELDS == section_fields(PretrainConfig, "runtime")


def test_an_inherited_option_has_the_help_and_default_of_its_source():
    @dataclasses.dataclass
    class Study:
        seed: int = inherited_option(PretrainConfig, "seed")
        train_steps: int = inherited_option(PretrainConfig, "train_steps", 7, "The study's.")

    seed, train_steps = dataclasses.fields(Study)
    assert seed.default == 0
    assert seed.metadata["help"] == "Seed of data order, augmentation, queue init and BN shuffles."
    assert train_steps.default == 7
    assert train_steps.metadata["help"] == "Total optimiser steps. The study's."
