"""The result file every evaluation script writes.

Format (JSON, written atomically through a temporary file and a rename)::

    {
      "evaluation": "linear_probe",          # which protocol
      "encoder": "runs/vader_r18",           # the encoder spec evaluated
      "command": ["experiments/eval_linear_probe.py", "--encoder=...", ...],  # sys.argv
      "config": {...},                       # protocol settings (flag values)
      "metrics": {...}                       # the numbers; NaN is written as null
    }
"""

import math
import sys

import numpy as np
from absl import flags

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


def write_results(path, evaluation, encoder_spec, metrics, config=None, argv=None):
    """Writes the result JSON (see the module docstring) to `path` and returns its dict."""
    payload = to_json_value(
        {
            "evaluation": evaluation,
            "encoder": encoder_spec,
            "command": list(sys.argv if argv is None else argv),
            "config": config or {},
            "metrics": metrics,
        }
    )
    write_json_atomic(path, payload)
    return payload


def script_flags():
    """`{name: value}` of the flags defined by the running script (`sys.argv[0]`)."""
    return {flag.name: flag.value for flag in flags.FLAGS.get_key_flags_for_module(sys.argv[0])}
