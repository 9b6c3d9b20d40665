"""Typed dataclass configs as the single source of truth for absl flags.

A config field declared with `option(default, help)` becomes a flag of the same name, type
and default, with `help` as its help text; `from_flags` builds the config back from the
parsed flags, and `to_argv` writes a config back as the command-line flags that make it.
Supported field types: bool, int, float, str, their `X | None` forms, and tuples of int,
float or str (comma-separated lists on the command line).
"""

import dataclasses
import types
import typing

from absl import flags

HELP = "help"
SECTION = "section"


def option(default, help, section=None, **kwargs):
    """A dataclass field with its flag help text (tuples default by value, immutably) and,
    optionally, the name of the config section it belongs to (`section_fields`)."""
    return dataclasses.field(default=default, metadata={HELP: help, SECTION: section}, **kwargs)


def section_fields(config_class, section):
    """Names of the fields of `config_class` declared with `option(..., section=section)`,
    in declaration order."""
    return tuple(
        field.name
        for field in dataclasses.fields(config_class)
        if field.metadata.get(SECTION) == section
    )


def inherited_option(config_class, name, default=dataclasses.MISSING, note=""):
    """A field that declares the same setting as field `name` of the dataclass
    `config_class` in another config (e.g. a study's `train_steps`, passed on to
    `PretrainConfig`): its help text, followed by `note`, and its default unless `default`
    is given. Annotate it with the same type as `config_class` does."""
    field = {f.name: f for f in dataclasses.fields(config_class)}[name]
    if default is dataclasses.MISSING:
        default = field.default
    return option(default, " ".join(filter(None, (field.metadata[HELP], note))))


def _base_type(kind):
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return kind


def _element_type(field):
    """int, float or str for a tuple field, from its annotation or its default."""
    args = typing.get_args(field.type)
    if args:
        return args[0]
    return type(field.default[0]) if field.default else str


def define_flags(config_class, flag_values=flags.FLAGS, exclude=()):
    """Defines one flag per field of `config_class` (except `exclude`); a field declared
    without `option` gets a pointer to the class as its help text."""
    for field in dataclasses.fields(config_class):
        if field.name in exclude:
            continue
        kind = _base_type(field.type)
        help_text = field.metadata.get(HELP, f"See {config_class.__name__}.{field.name}.")
        if kind is tuple or typing.get_origin(kind) is tuple:
            default = None if field.default is None else [str(v) for v in field.default]
            flags.DEFINE_list(field.name, default, help_text, flag_values=flag_values)
            continue
        define = {
            bool: flags.DEFINE_bool,
            int: flags.DEFINE_integer,
            float: flags.DEFINE_float,
            str: flags.DEFINE_string,
        }[kind]
        define(field.name, field.default, help_text, flag_values=flag_values)


def from_flags(config_class, flag_values=flags.FLAGS, **overrides):
    """The `config_class` instance of the parsed flags (fields without a flag keep their
    default unless given in `overrides`)."""
    values = {}
    for field in dataclasses.fields(config_class):
        if field.name in overrides or field.name not in flag_values:
            continue
        value = flag_values[field.name].value
        kind = _base_type(field.type)
        if value is not None and (kind is tuple or typing.get_origin(kind) is tuple):
            try:
                value = tuple(_element_type(field)(item) for item in value)
            except ValueError:
                raise ValueError(
                    f"--{field.name} must be a comma-separated list of "
                    f"{_element_type(field).__name__}, got {','.join(value)!r}."
                ) from None
        values[field.name] = value
    return config_class(**values, **overrides)


def _flag_text(value):
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def to_argv(config, fields=None):
    """`["--name=value", ...]` setting `fields` (default: all) of a config instance, for a
    command line that rebuilds it with `from_flags`; fields that are None are left out."""
    names = fields or [field.name for field in dataclasses.fields(config)]
    return [
        f"--{name}={_flag_text(getattr(config, name))}"
        for name in names
        if getattr(config, name) is not None
    ]
