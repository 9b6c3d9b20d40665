"""Which precision to train in: `PretrainConfig.mixed_precision` values, and the hardware
check behind `"auto"`.

`auto` picks, by what the training devices compute natively:

- `mixed_bfloat16` on a TPU, on NVIDIA GPUs of compute capability 8.0 or more (Ampere
  and later: A100, H100, L4...) and, without GPUs, on CPUs with AVX512-BF16 or AMX
  (Intel Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later). Elsewhere
  TensorFlow emulates bfloat16 and it is slower than float32.
- `mixed_float16` on GPUs of compute capability 7.x (Volta and Turing: V100, T4), whose
  tensor cores multiply float16 but not bfloat16. Keras then wraps the optimiser in a
  `LossScaleOptimizer`, which skips steps whose scaled gradients overflow (see
  `MomentumContrast.train_step`).
- `float32` elsewhere (older GPUs, CPUs without bfloat16 instructions).

With several GPUs the oldest decides: training runs on all of them.
"""

import tensorflow as tf
from absl import logging

# `PretrainConfig.mixed_precision` values; "auto" is resolved by `auto_policy`.
MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16", "auto")
# /proc/cpuinfo flags of CPUs with bfloat16 multiply instructions.
CPU_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")
# GPUs from this compute capability compute bfloat16 natively (Ampere)...
MIN_GPU_COMPUTE_CAPABILITY = (8, 0)
# ... and from this one float16 (Volta's tensor cores).
MIN_GPU_FLOAT16_CAPABILITY = (7, 0)


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


def auto_policy(cpuinfo_text=None, gpu_capabilities=None, has_tpu=None):
    """The Keras policy `--mixed_precision=auto` stands for on a machine (module docstring):
    "mixed_bfloat16", "mixed_float16" or "float32".

    Args (all read from this machine when None; given in tests and by the dry run):
        cpuinfo_text: /proc/cpuinfo text.
        gpu_capabilities: list of `(major, minor)` compute capabilities of the GPUs.
        has_tpu: whether a TPU is attached.
    """
    if has_tpu is None:
        has_tpu = bool(tf.config.list_logical_devices("TPU"))
    if has_tpu:
        return "mixed_bfloat16"
    if gpu_capabilities is None:
        gpu_capabilities = gpu_compute_capabilities()
    if gpu_capabilities:
        # Training runs on all the GPUs: the oldest decides.
        oldest = min(tuple(c) for c in gpu_capabilities)
        if oldest >= MIN_GPU_COMPUTE_CAPABILITY:
            return "mixed_bfloat16"
        return "mixed_float16" if oldest >= MIN_GPU_FLOAT16_CAPABILITY else "float32"
    has_bf16 = any(flag in cpu_flags(cpuinfo_text) for flag in CPU_BFLOAT16_FLAGS)
    return "mixed_bfloat16" if has_bf16 else "float32"


def has_fast_bfloat16(cpuinfo_text=None, gpu_capabilities=None, has_tpu=None):
    """Whether this machine computes bfloat16 natively: a TPU, GPUs of compute capability
    >= 8.0, or (when there is no GPU) a CPU with AVX512-BF16 or AMX (`auto_policy`'s
    arguments)."""
    return auto_policy(cpuinfo_text, gpu_capabilities, has_tpu) == "mixed_bfloat16"


def resolve(mixed_precision, **hardware):
    """The Keras policy name for a `MIXED_PRECISION` value: "float32" for "none", and for
    "auto" `auto_policy(**hardware)`."""
    if mixed_precision == "auto":
        policy = auto_policy(**hardware)
        logging.info("--mixed_precision=auto: %s on this machine.", policy)
        return policy
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"mixed_precision={mixed_precision!r}; expected one of {', '.join(MIXED_PRECISION)}."
        )
    return "float32" if mixed_precision == "none" else mixed_precision


# Reference GPUs for `describe`: what `auto` becomes on the machines users train on.
REFERENCE_GPUS = (("A100/H100-class GPUs", (8, 0)), ("V100/T4-class GPUs", (7, 0)))


def describe(mixed_precision):
    """One line saying which Keras policy `mixed_precision` gives on this machine and, for
    "auto", on the `REFERENCE_GPUS` (the dry run prints it)."""
    policy = resolve(mixed_precision)
    if mixed_precision != "auto":
        return f"Precision: {policy} (--mixed_precision={mixed_precision})."
    elsewhere = "; ".join(
        f"{auto_policy(gpu_capabilities=[capability] * 8, has_tpu=False)} on {name}"
        for name, capability in REFERENCE_GPUS
    )
    return f"Precision: --mixed_precision=auto is {policy} on this machine; {elsewhere}."
