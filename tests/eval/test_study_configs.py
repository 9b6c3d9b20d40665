"""The study harnesses' configs: their `PretrainConfig` fields are PretrainConfig's (same
type and help), and the `PretrainConfig` each study makes is exactly the one the code
before that refactor made (written out here), so that runs made then still resume."""

import dataclasses

import pytest

from vader_tf.studies import compute_curve_study, small_study, speed_quality_study, tuning_study
from vader_tf.training.pretrain import PretrainConfig

DATA = (
    "folder:/data/bsds500/images/train,folder:/data/bsds500/images/test,"
    "folder:/data/camvid/train"
)
# StudyConfig(data_root="/data", run_dir="runs/study", verbose=0).pretrain_config("vader", 1)
# as the code before the refactor made it (printed from that code, written out here).
STUDY_VADER = {
    "model_dir": "runs/study/seed1/vader", "data": DATA, "method": "vader",
    "backbone": "resnet18", "backbone_preset": None, "init_weights": None,
    "decoder_channels": 128, "embedding_dim": 128, "image_size": 96, "batch_size": 16,
    "num_points": 64, "min_crop_scale": 0.2, "color_jitter": 0.4, "grayscale_prob": 0.2,
    "blur_prob": 0.5, "flip_prob": 0.5, "min_overlap": 0.1, "max_image_pixels": 67108864,
    "cache_decoded_mb": 512, "queue_size": 4096, "queue_points_per_image": 16,
    "temperature": 0.2, "densecl_loss_weight": 0.5, "global_loss_weight": 0.0,
    "global_queue_size": 256, "global_level": "P5", "coarse_level": None,
    "coarse_loss_weight": 0.5, "propagation_power": None, "ema_momentum": 0.99,
    "momentum_schedule": "constant", "bn_groups": 2, "shuffle_bn": True,
    "symmetric_loss": True, "train_steps": 1200, "base_learning_rate": 0.5,
    "reference_batch_size": 256, "warmup_steps": 0, "weight_decay": 0.0001,
    "sgd_momentum": 0.9, "backbone_learning_rate_scale": 1.0, "mixed_precision": "none",
    "strategy": "auto", "num_cpu_devices": 1,
    "checkpoint_every": 100, "log_every": 10, "image_summary_every": None,
    "keep_checkpoints": 3, "seed": 1, "deterministic": False, "jit_compile": False,
    "verbose": 0,
}
START = "runs/study/seed1/moco_backbone.weights.h5"
EXPECTED_STUDY_RUNS = {
    "vader": STUDY_VADER,
    "moco": {**STUDY_VADER, "model_dir": "runs/study/seed1/moco", "method": "moco",
             "queue_size": 256},
    "vader_from_moco": {**STUDY_VADER, "model_dir": "runs/study/seed1/vader_from_moco",
                        "init_weights": START, "train_steps": 600},
    "moco_continued": {**STUDY_VADER, "model_dir": "runs/study/seed1/moco_continued",
                       "method": "moco", "init_weights": START, "queue_size": 256,
                       "train_steps": 600},
}
# Every budget flag changed (resnet34, 64 px, batch 8, 7 steps, LR 0.3, checkpoints every 3,
# 5 continued steps): the continued MoCo run.
EXPECTED_CUSTOM_MOCO_CONTINUED = {
    **EXPECTED_STUDY_RUNS["moco_continued"], "backbone": "resnet34", "image_size": 64,
    "batch_size": 8, "train_steps": 5, "base_learning_rate": 0.3, "checkpoint_every": 3,
}
# The fields of the three study scripts (their flags) and their defaults before the refactor.
STUDY_FLAGS = {
    "data_root": "", "run_dir": "runs/reproduce_small", "results_dir": "results",
    "report": "RESULTS.md", "notes": None, "before_dir": None, "before_label": "before",
    "backbone": "resnet18", "image_size": 96, "batch_size": 16, "train_steps": 1200,
    "base_learning_rate": 0.5, "checkpoint_every": 100, "vader_queue_size": 4096,
    "moco_queue_size": 256, "seeds": (0, 1, 2), "continue_steps": 600,
    "layers": ("embedding", "decoder", "P4", "decoder+P4@0.25"), "probe_image_size": 224, "probe_steps": 1000,
    "probe_limit": None, "davis_image_size": 192, "davis_max_frames": None,
    "correspondence_image_size": 256, "correspondence_images": 100, "force": False,
    "report_only": False, "verbose": 1,
}
VARIANT_FLAGS = {
    "data_root": "", "train_steps": 1200, "image_size": 96, "batch_size": 16,
    "checkpoint_every": 100, "probe_image_size": 224, "probe_steps": 1000,
    "probe_limit": None, "force": False, "verbose": 1,
}
TUNING_FLAGS = {
    **VARIANT_FLAGS, "run_dir": "runs/reproduce_small", "results_dir": "results",
    "variants": ("default", "temperature_0.1", "temperature_0.4", "points_128", "queued_8",
                 "queued_64", "decoder_256", "global_0.25", "global_0.5", "coarse_P4",
                 "global_decoder_0.5", "propagation_2", "backbone_lr_0.1",
                 "backbone_frozen", "decoder_lr_4x"),
    "start": "random", "seeds": (0,), "continue_steps": 600, "layers": ("decoder+P4@0.25",),
    "davis_image_size": 192, "davis_max_frames": None, "held_out": False,
}
SPEED_QUALITY_FLAGS = {
    **VARIANT_FLAGS, "run_dir": "runs/speed_quality", "results_dir": "results/speed_quality",
    "train_steps": 300,
    "variants": ("float32_symmetric", "bfloat16_symmetric", "float32_one_direction"),
    "seed": 0,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_STUDY_RUNS))
def test_the_study_makes_the_same_pretrain_config_as_before(name):
    config = small_study.StudyConfig(data_root="/data", run_dir="runs/study", verbose=0)
    assert dataclasses.asdict(config.pretrain_config(name, 1)) == EXPECTED_STUDY_RUNS[name]


def test_every_budget_flag_reaches_the_pretrain_config_as_before():
    config = small_study.StudyConfig(
        data_root="/data", run_dir="runs/study", verbose=0, backbone="resnet34",
        image_size=64, batch_size=8, train_steps=7, base_learning_rate=0.3,
        checkpoint_every=3, continue_steps=5,
    )
    assert (
        dataclasses.asdict(config.pretrain_config("moco_continued", 1))
        == EXPECTED_CUSTOM_MOCO_CONTINUED
    )


def test_the_variant_studies_make_the_same_pretrain_configs_as_before():
    tuning = tuning_study.TuningConfig(data_root="/data", run_dir="runs/study", verbose=0)
    assert dataclasses.asdict(tuning.pretrain_config("coarse_P4", 1)) == {
        **STUDY_VADER, "model_dir": "runs/study/seed1/vader_coarse_P4", "coarse_level": "P4",
    }
    from_moco = tuning_study.TuningConfig(
        data_root="/data", run_dir="runs/study", verbose=0, start="moco"
    )
    assert dataclasses.asdict(from_moco.pretrain_config("coarse_P4", 1)) == {
        **EXPECTED_STUDY_RUNS["vader_from_moco"],
        "model_dir": "runs/study/seed1/vader_from_moco_coarse_P4", "coarse_level": "P4",
    }
    assert from_moco.run_name("default") == "vader_from_moco"
    speed = speed_quality_study.SpeedQualityConfig(data_root="/data", verbose=0, seed=1)
    assert dataclasses.asdict(speed.pretrain_config("bfloat16_symmetric")) == {
        **STUDY_VADER, "model_dir": "runs/speed_quality/bfloat16_symmetric",
        "train_steps": 300, "mixed_precision": "mixed_bfloat16",
    }


@pytest.mark.parametrize("config_class, expected", [
    (small_study.StudyConfig, STUDY_FLAGS),
    (tuning_study.TuningConfig, TUNING_FLAGS),
    (speed_quality_study.SpeedQualityConfig, SPEED_QUALITY_FLAGS),
])
def test_the_study_scripts_keep_their_flags_and_defaults(config_class, expected):
    assert {f.name: f.default for f in dataclasses.fields(config_class)} == expected


@pytest.mark.parametrize("config_class", [
    small_study.StudyConfig, small_study.VariantsConfig, tuning_study.TuningConfig,
    speed_quality_study.SpeedQualityConfig, compute_curve_study.CurveConfig,
])
def test_the_pretraining_fields_are_declared_by_pretrain_config(config_class):
    """A study field named like a `PretrainConfig` field has its type and help text (the
    help may add a sentence about the study)."""
    pretrain_fields = {f.name: f for f in dataclasses.fields(PretrainConfig)}
    shared = [f for f in dataclasses.fields(config_class) if f.name in pretrain_fields]
    assert {f.name for f in shared} >= {"train_steps", "image_size", "batch_size"}
    for field in shared:
        own = pretrain_fields[field.name]
        assert field.type == own.type, field.name
        assert field.metadata["help"].startswith(own.metadata["help"]), field.name
