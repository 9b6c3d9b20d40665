"""Flags and steps the evaluation commands share (`eval_*`, `finetune_segmentation`,
`visualize_features`): the encoder evaluated and its feature tap, the result JSON, the
splits of a labelled dataset.

The flags are defined on behalf of the command that calls these functions
(`flags.disclaim_key_flags`): they belong to its module exactly as if it had defined
them itself, so its `--help`, the flags its result records (`reporting.script_flags`)
and their order are those of a command that spells them out.
"""

from absl import flags

from vader_tf import storage
from vader_tf.config_flags import from_flags
from vader_tf.eval.encoders import (
    FEATURES_LAYER,
    LAYER_HELP,
    LAYERS,
    is_layer,
    load_feature_extractor,
)
from vader_tf.eval.reporting import script_flags, write_results

# Flags defined below are attributed to the caller's module (see the module docstring).
flags.disclaim_key_flags()

FLAGS = flags.FLAGS

ENCODER_HELP = "Run dir, .keras file, SavedModel dir or random:<backbone>."


def define_encoder_flags(encoder_help=ENCODER_HELP, layer=True):
    """`--encoder` (no default) and, with `layer`, `--layer`: the encoder output to
    evaluate (`vader_tf.eval.encoders.LAYERS`)."""
    flags.DEFINE_string("encoder", None, encoder_help)
    if layer:
        flags.DEFINE_string("layer", FEATURES_LAYER, LAYER_HELP)
        flags.register_validator(
            "layer",
            is_layer,
            message=f"--layer must be one of {LAYERS} or some joined by '+' (each optionally "
            "weighted, '@w').",
        )


def define_output_flag():
    """`--output`, the result JSON (no default)."""
    flags.DEFINE_string("output", None, "Path of the result JSON.")


def define_split_flags(
    split_help="Split the probe is trained on.",
    eval_split="val",
    eval_split_help="Split the probe is scored on.",
    limit_help="Use only the first N images of each split (smoke tests).",
):
    """`--split` (default "train"), `--eval_split` and `--limit` (default: all) of a
    dataset of `<split>.txt` lists."""
    flags.DEFINE_string("split", "train", split_help)
    flags.DEFINE_string("eval_split", eval_split, eval_split_help)
    flags.DEFINE_integer("limit", None, limit_help)


def checked_protocol(protocol_class):
    """The `protocol_class` of the command's flags, once `--output` is known to be
    writable (before any work; a one-line error naming it otherwise)."""
    storage.check_writable_file(FLAGS.output, "output")
    return from_flags(protocol_class)


def feature_extractor():
    """The feature extractor of `--encoder` at `--layer` (random encoders seeded by
    `--seed`)."""
    return load_feature_extractor(FLAGS.encoder, seed=FLAGS.seed, layer=FLAGS.layer)


def write_result(evaluation, metrics, protocol):
    """Writes `--output`: `metrics` of `--encoder` under `evaluation`, with the command's
    own flags and `protocol`."""
    write_results(
        FLAGS.output, evaluation, FLAGS.encoder, metrics, config=script_flags(), protocol=protocol
    )
