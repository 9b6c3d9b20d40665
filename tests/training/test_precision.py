"""`--mixed_precision=auto`: bfloat16 only where the hardware computes it natively, read
from faked /proc/cpuinfo text, GPU compute capabilities and TPU presence."""

import keras
import pytest

from vader_tf.training import precision
from vader_tf.training.pretrain import PretrainConfig, dtype_policy

# Trimmed /proc/cpuinfo of two processors: the flags line is what matters.
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
bugs\t\t: spectre_v1
processor\t: 1
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
"""
SKYLAKE = """processor\t: 0
model name\t: Intel(R) Xeon(R) CPU @ 2.00GHz
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_vnni
"""
AVX512_BF16_ONLY = "flags\t: sse2 avx2 avx512f avx512_bf16\n"
# The word "bf16" elsewhere than in the flags line does not count.
NO_FLAGS_LINE = "model name\t: bf16 amx_bf16 avx512_bf16 lookalike\n"

NO_ACCELERATOR = dict(gpu_capabilities=[], has_tpu=False)


@pytest.mark.parametrize(
    "cpuinfo,expected",
    [(SAPPHIRE_RAPIDS, True), (AVX512_BF16_ONLY, True), (SKYLAKE, False), (NO_FLAGS_LINE, False), ("", False)],
)
def test_cpu_detection_reads_the_flags_line(cpuinfo, expected):
    assert precision.has_fast_bfloat16(cpuinfo, **NO_ACCELERATOR) is expected
    assert precision.resolve("auto", cpuinfo_text=cpuinfo, **NO_ACCELERATOR) == (
        "mixed_bfloat16" if expected else "float32"
    )


def test_cpu_bfloat16_flags_lists_bf16_and_amx_flags():
    assert precision.cpu_bfloat16_flags(SAPPHIRE_RAPIDS) == [
        "amx_bf16", "amx_int8", "amx_tile", "avx512_bf16"
    ]
    assert precision.cpu_bfloat16_flags(SKYLAKE) == []


@pytest.mark.parametrize(
    "capabilities,expected",
    [([(8, 0)], True), ([(9, 0), (8, 6)], True), ([(7, 5)], False), ([(8, 0), (7, 0)], False)],
)
def test_gpus_decide_over_the_cpu(capabilities, expected):
    # A CPU with AMX does not make bfloat16 fast when training runs on old GPUs.
    assert precision.has_fast_bfloat16(SAPPHIRE_RAPIDS, capabilities, has_tpu=False) is expected
    assert precision.has_fast_bfloat16(SKYLAKE, capabilities, has_tpu=False) is expected


def test_a_tpu_has_bfloat16():
    assert precision.has_fast_bfloat16(SKYLAKE, [], has_tpu=True)


def test_explicit_values_are_kept_and_unknown_ones_refused():
    assert precision.resolve("none") == "float32"
    assert precision.resolve("mixed_bfloat16", cpuinfo_text=SKYLAKE) == "mixed_bfloat16"
    assert precision.resolve("mixed_float16") == "mixed_float16"
    with pytest.raises(ValueError, match="mixed_precision='bf16'"):
        precision.resolve("bf16")


def test_auto_is_the_default_and_follows_the_hardware(monkeypatch):
    assert PretrainConfig().mixed_precision == "auto"
    PretrainConfig(mixed_precision="auto").validate()
    monkeypatch.setattr(precision, "has_fast_bfloat16", lambda **hardware: True)
    with dtype_policy("auto"):
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    monkeypatch.setattr(precision, "has_fast_bfloat16", lambda **hardware: False)
    with dtype_policy("auto"):
        assert keras.mixed_precision.global_policy().name == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
