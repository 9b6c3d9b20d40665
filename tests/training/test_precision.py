"""`--mixed_precision=auto`: bfloat16 where the hardware computes it natively, float16
with loss scaling on GPUs of compute capability 7.x, float32 elsewhere; read from faked
/proc/cpuinfo text, GPU compute capabilities and TPU presence."""

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


# (GPU compute capabilities, policy): A100/H100/L4 compute bfloat16, V100/T4 float16
# (tensor cores without bfloat16), a P100 neither; with several GPUs the oldest decides.
GPUS = [
    ([(8, 0)], "mixed_bfloat16"),
    ([(9, 0), (8, 6)], "mixed_bfloat16"),
    ([(8, 9)] * 8, "mixed_bfloat16"),
    ([(7, 0)] * 8, "mixed_float16"),
    ([(7, 5)], "mixed_float16"),
    ([(8, 0), (7, 0)], "mixed_float16"),
    ([(6, 0)], "float32"),
    ([(8, 0), (6, 1)], "float32"),
]


@pytest.mark.parametrize("capabilities,expected", GPUS)
def test_gpus_decide_over_the_cpu(capabilities, expected):
    # A CPU with AMX does not make bfloat16 fast when training runs on older GPUs.
    for cpu in (SAPPHIRE_RAPIDS, SKYLAKE):
        assert precision.auto_policy(cpu, capabilities, has_tpu=False) == expected
        assert precision.resolve(
            "auto", cpuinfo_text=cpu, gpu_capabilities=capabilities, has_tpu=False
        ) == expected
        assert precision.has_fast_bfloat16(cpu, capabilities, has_tpu=False) is (
            expected == "mixed_bfloat16"
        )


def test_auto_reads_the_machines_gpus(monkeypatch):
    # The device list and details as TensorFlow reports them on a V100 machine.
    gpus = [f"/physical_device:GPU:{i}" for i in range(8)]
    monkeypatch.setattr(
        precision.tf.config, "list_physical_devices",
        lambda kind=None: gpus if kind == "GPU" else [],
    )
    monkeypatch.setattr(
        precision.tf.config.experimental, "get_device_details",
        lambda gpu: {"device_name": "Tesla V100-SXM2-16GB", "compute_capability": (7, 0)},
    )
    assert precision.gpu_compute_capabilities() == [(7, 0)] * 8
    assert precision.auto_policy(SAPPHIRE_RAPIDS, has_tpu=False) == "mixed_float16"


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
    for policy in ("mixed_bfloat16", "mixed_float16", "float32"):
        monkeypatch.setattr(precision, "auto_policy", lambda p=policy, **hardware: p)
        with dtype_policy("auto"):
            assert keras.mixed_precision.global_policy().name == policy
    assert keras.mixed_precision.global_policy().name == "float32"
