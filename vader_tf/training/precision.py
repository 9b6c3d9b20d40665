"""Which precision to train in: `PretrainConfig.mixed_precision` values, and the hardware
check behind `"auto"` (bfloat16 where the machine computes it natively, float32
elsewhere).

bfloat16 pays where the hardware multiplies in it: CPUs with AVX512-BF16 or AMX (Intel
Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later), NVIDIA GPUs of compute
capability 8.0 or more (Ampere and later) and TPUs. Elsewhere TensorFlow emulates it and
it is slower than float32.
"""

import tensorflow as tf
from absl import logging

# `PretrainConfig.mixed_precision` values. "auto": "mixed_bfloat16" where
# `has_fast_bfloat16()`, else "none" (float32).
MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16", "auto")
# /proc/cpuinfo flags of CPUs with bfloat16 multiply instructions.
CPU_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")
MIN_GPU_COMPUTE_CAPABILITY = (8, 0)


def cpu_flags(cpuinfo_text=None):
    """The CPU's feature flags from Linux' /proc/cpuinfo text (read when not given).

    Returns an empty set where there is no /proc/cpuinfo (macOS, Windows).
    """
    if cpuinfo_text is None:
        try:
            # This machine's kernel file, never a run's storage: plain `open`, not gfile.
            with open("/proc/cpuinfo") as f:
                cpuinfo_text = f.read()
        except OSError:
            return set()
    for line in cpuinfo_text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "flags":
            return set(value.split())
    return set()


def cpu_bfloat16_flags(cpuinfo_text=None):
    """The CPU's bfloat16 and AMX flags, sorted (e.g. amx_bf16, amx_tile, avx512_bf16)."""
    return sorted(
        flag for flag in cpu_flags(cpuinfo_text) if "bf16" in flag or flag.startswith("amx")
    )


def gpu_compute_capabilities():
    """Compute capabilities `(major, minor)` of the visible GPUs."""
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability:
            capabilities.append(tuple(capability))
    return capabilities


def has_fast_bfloat16(cpuinfo_text=None, gpu_capabilities=None, has_tpu=None):
    """Whether this machine computes bfloat16 natively: a TPU, a GPU of compute capability
    >= 8.0, or (when there is no GPU) a CPU with AVX512-BF16 or AMX.

    Args (all read from the machine when None; given in tests):
        cpuinfo_text: /proc/cpuinfo text.
        gpu_capabilities: list of `(major, minor)` of the GPUs.
        has_tpu: whether a TPU is attached.
    """
    if has_tpu is None:
        has_tpu = bool(tf.config.list_logical_devices("TPU"))
    if has_tpu:
        return True
    if gpu_capabilities is None:
        gpu_capabilities = gpu_compute_capabilities()
    if gpu_capabilities:
        # Training runs on the GPUs: all of them must have it.
        return all(tuple(c) >= MIN_GPU_COMPUTE_CAPABILITY for c in gpu_capabilities)
    return any(flag in cpu_flags(cpuinfo_text) for flag in CPU_BFLOAT16_FLAGS)


def resolve(mixed_precision, **hardware):
    """The Keras policy name for a `MIXED_PRECISION` value: "float32" for "none", and for
    "auto" "mixed_bfloat16" where `has_fast_bfloat16(**hardware)`, else "float32"."""
    if mixed_precision == "auto":
        fast = has_fast_bfloat16(**hardware)
        policy = "mixed_bfloat16" if fast else "float32"
        logging.info("--mixed_precision=auto: %s (native bfloat16: %s).", policy, fast)
        return policy
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"mixed_precision={mixed_precision!r}; expected one of {', '.join(MIXED_PRECISION)}."
        )
    return "float32" if mixed_precision == "none" else mixed_precision
