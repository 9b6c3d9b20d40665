"""The result file every evaluation script writes.

Format (JSON, written atomically through a temporary file and a rename)::

    {
      "evaluation": "linear_probe",          # which protocol
      "encoder": "runs/vader_r18",           # the encoder spec evaluated
      "command": ["experiments/eval_linear_probe.py", "--encoder=...", ...],  # sys.argv
      "config": {...},                       # the other settings: data, tap, seed, limits
      "protocol": {"name": "CamVidProbeProtocol", "steps": 2000, ...},  # every field
      "metrics": {...}                       # the numbers; NaN is written as null
      "training": {"mixed_precision": "float32", "symmetric_loss": true}  # optional
    }

`protocol` is `vader_tf.eval.protocols.record` of the protocol object the numbers were
computed with (null for files without one, e.g. pretraining summaries). Files written
before it existed lack the key: readers use `result.get("protocol")` (`same_protocol`).
`training` (written only when given) is the resolved precision policy and loss direction
of the pretraining run the numbers come from (the study harness records it).
"""

import math
import sys

import numpy as np
from absl import flags

from vader_tf.eval.protocols import record
from vader_tf.storage import write_json_atomic


def to_json_value(value):
    """Converts numpy scalars/arrays and NaN to plain JSON values (NaN -> None)."""
    if isinstance(value, dict):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_json_value(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results(
    path, evaluation, encoder_spec, metrics, config=None, argv=None, protocol=None,
    training=None,
):
    """Writes the result JSON (see the module docstring) to `path` and returns its dict."""
    payload = to_json_value(
        {
            "evaluation": evaluation,
            "encoder": encoder_spec,
            "command": list(sys.argv if argv is None else argv),
            "config": config or {},
            "protocol": None if protocol is None else record(protocol),
            "metrics": metrics,
            **({} if training is None else {"training": training}),
        }
    )
    write_json_atomic(path, payload)
    return payload


def same_protocol(result, protocol):
    """Whether a result (a dict read from a result JSON) records `protocol`; a result
    without the key (written before protocols were recorded) counts as the same."""
    recorded = result.get("protocol")
    return recorded is None or recorded == to_json_value(record(protocol))


def script_flags():
    """`{name: value}` of the flags defined by the running command itself (its module in
    `vader_tf.scripts`, or the script `sys.argv[0]`); the flags
    `config_flags.define_flags` generates from a protocol are not among them (they are
    recorded as the protocol)."""
    modules = [sys.argv[0]] + [
        name for name in flags.FLAGS.flags_by_module_dict() if name.startswith("vader_tf.scripts.")
    ]
    return {
        flag.name: flag.value
        for module in modules
        for flag in flags.FLAGS.get_key_flags_for_module(module)
    }
