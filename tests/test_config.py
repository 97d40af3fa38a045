"""Profiles and run configs: valid choices, type checks, clear messages."""

import dataclasses

import pytest

from flatness.chapters import logreg
from flatness.errors import FlatnessError
from flatness.profiles import get_profile
from flatness.training.config import RunConfig


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(
        FlatnessError, match="unknown profile 'big'; valid choices: 'smoke', 'cpu', 'paper'"
    ):
        get_profile("big")


def test_profiles_grow_from_smoke_to_paper():
    smoke, cpu, paper = (logreg.settings(n) for n in ("smoke", "cpu", "paper"))
    assert smoke.dataset == cpu.dataset == "digits" and paper.dataset == "mnist"
    assert smoke.epochs < cpu.epochs < paper.epochs
    assert len(cpu.seeds) >= 3 and {0.0, 1e-4, 5e-4, 1e-3, 1e-2} <= set(cpu.weight_decays)
    assert len(cpu.run_configs()) == len(cpu.seeds) * len(cpu.weight_decays)


def test_overrides_are_type_checked():
    settings = logreg.settings("smoke")
    assert settings.with_overrides(seeds=[3, 4]).seeds == (3, 4)
    assert settings.with_overrides(seeds=5).seeds == (5,)
    assert settings.with_overrides(weight_decays=[0, 1e-3]).weight_decays == (0.0, 1e-3)
    with pytest.raises(FlatnessError, match="seeds must be a list"):
        settings.with_overrides(seeds="abc")
    with pytest.raises(FlatnessError, match=r"seeds must be non-negative integers, got 1.5"):
        settings.with_overrides(seeds=[0, 1.5])
    with pytest.raises(FlatnessError, match=r"duplicate seeds \[1\]"):
        settings.with_overrides(seeds=[1, 0, 1])
    with pytest.raises(FlatnessError, match=r"weight_decays\[0\] must be at least 0"):
        settings.with_overrides(weight_decays=[-1])
    with pytest.raises(FlatnessError, match="unknown dataset 'imagenet'"):
        settings.with_overrides(dataset="imagenet")


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("model", "resnet", "unknown model 'resnet'; valid choices: 'logreg', 'mlp'.*'vgg16'"),
        ("dataset", "cifar", "unknown dataset"),
        ("weight_decay", "big", "weight_decay must be a number"),
        ("weight_decay", float("nan"), "weight_decay must be finite"),
        ("seed", True, "seed must be an integer"),
        ("epochs", 0, "epochs must be at least 1"),
        ("lr", -0.1, "lr must be above 0"),
        ("lr", float("nan"), "lr must be finite"),
        ("momentum", -0.5, "momentum must be at least 0"),
        ("momentum", 1.0, r"momentum must be in \[0, 1\)"),
        ("batch_size", 0, "batch_size must be at least 1"),
        (
            "optimiser",
            "rmsprop",
            "unknown optimiser 'rmsprop'; valid choices: 'sgd', 'adam', 'adamw'",
        ),
        ("schedule", "exp", "unknown schedule 'exp'; valid choices: 'linear', 'constant'"),
        ("width", 0, "width must be above 0"),
        ("average_lr", 0.01, "average_lr is set but average_start is not"),
        ("hessian_rtol", 2, "hessian_rtol must be between 0 and 1"),
        ("augment", "yes", "augment must be true, false or null"),
        ("final_ratio", 2, r"final_ratio must be in \(0, 1\]"),
    ],
)
def test_run_config_rejects_bad_fields(field, value, message):
    fields = dict(model="logreg", dataset="digits", weight_decay=0.0, seed=0, epochs=1)
    with pytest.raises(FlatnessError, match=message):
        RunConfig(**{**fields, field: value})


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(average_start=5, average_lr=0.01), r"average_start must be below epochs \(5\)"),
        (dict(average_start=2), "average_start needs average_lr"),
        (dict(average_start=2, average_lr=-1.0), "average_lr must be above 0"),
    ],
)
def test_averaging_settings_are_checked_together(fields, message):
    base = dict(model="logreg", dataset="digits", weight_decay=0.0, seed=0, epochs=5)
    with pytest.raises(FlatnessError, match=message):
        RunConfig(**base, **fields)


def test_a_model_that_does_not_fit_the_data_is_refused_where_the_config_is_made():
    # a CNN cannot take the digits as flat vectors: build() refuses int shapes for CNNs,
    # and every image model is checked on the data set's (C, H, W) on the meta device
    cfg = RunConfig(model="vgg16", dataset="digits", weight_decay=0.0, seed=0, epochs=1)
    assert cfg.width == 1.0
    with pytest.raises(FlatnessError, match="preresnet-44|depth"):
        RunConfig(model="preresnet-44", dataset="digits", weight_decay=0.0, seed=0, epochs=1)


#: every float field of a run (the annotations are text: ``from __future__ import annotations``)
FLOAT_FIELDS = [f.name for f in dataclasses.fields(RunConfig) if "float" in str(f.type)]


@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_every_float_field_refuses_values_beyond_float32_which_training_uses(field):
    base = dict(model="logreg", dataset="digits", weight_decay=0.0, seed=0, epochs=5)
    if field == "average_lr":
        base["average_start"] = 2
    # float32's largest is 3.40e38: these overflow to inf there (torch's SGD raised on 1e300)
    for value in (1e300, 10**400, -1e39, 3.5e38):
        with pytest.raises(FlatnessError, match=f"{field} must lie in float32's range"):
            RunConfig(**{**base, field: value})
    # and these round to 0 there
    with pytest.raises(FlatnessError, match=f"{field}=1e-300 is 0 in float32"):
        RunConfig(**{**base, field: 1e-300})


def test_float_fields_within_float32_are_kept():
    assert set(FLOAT_FIELDS) == {
        "weight_decay", "lr", "momentum", "width", "average_lr", "final_ratio", "hessian_rtol",
        "snapshot_loss",
    }  # fmt: skip
    cfg = RunConfig(model="logreg", dataset="digits", weight_decay=3e38, seed=0, epochs=1, lr=1e-44)
    assert (cfg.weight_decay, cfg.lr) == (3e38, 1e-44)


def test_a_label_names_the_lr():
    cfg = RunConfig(model="logreg", dataset="digits", weight_decay=0.0, seed=0, epochs=1, lr=1e-7)
    assert cfg.label() == "logreg/digits sgd lr=1e-07 wd=0 seed=0"


#: every size field, a value just beyond its bound, and words of the reason its message gives
SIZE_BOUNDS = [
    ("epochs", 10_001, "10,000 .the paper's longest runs take 300 epochs"),
    ("epochs", 1e10, "10,000"),
    ("batch_size", 2**20 + 1, "1,048,576 .the data sets here hold at most 60,000"),
    ("train_size", 2**24 + 1, "16,777,216"),
    ("hessian_every", 10_001, "10,000"),
    ("hessian_max_probes", 100_001, "100,000"),
    ("hessian_examples", 2**24 + 1, "16,777,216"),
    ("slq_steps", 10_001, "10,000 .Lanczos"),
    ("width", 1e8, "1,000.0 .a thousand times the paper's network"),
]


@pytest.mark.parametrize(("field", "value", "words"), SIZE_BOUNDS)
def test_every_size_field_has_a_bound_that_names_its_reason(field, value, words):
    base = dict(model="logreg", dataset="digits", weight_decay=0.0, seed=0, epochs=5)
    with pytest.raises(FlatnessError, match=f"^{field} must be at most {words}"):
        RunConfig(**{**base, field: value})
    bound = int(words.split()[0].replace(",", "").split(".")[0])
    RunConfig(**{**base, field: bound, **({"epochs": bound} if field == "hessian_every" else {})})


def test_a_width_within_bounds_whose_network_is_too_large_is_refused_by_its_parameters():
    # 784-512w-256w-10 at w=500: about 3.3e10 parameters, 130 GB of float32 weights
    with pytest.raises(FlatnessError, match=r"has [0-9,]+ parameters, above the 1,000,000,000"):
        RunConfig(
            model="mlp-512-256", dataset="mnist", weight_decay=0.0, seed=0, epochs=1, width=500
        )


def test_numbers_yaml_keeps_as_text_are_read_as_the_numbers_users_mean():
    # YAML 1.1 (PyYAML, papermill's -y) reads 1e-2 as the text "1e-2"
    cfg = RunConfig(model="logreg", dataset="digits", weight_decay="1e-2", seed=0, epochs="1E1")
    assert (cfg.weight_decay, cfg.epochs) == (0.01, 10)
    with pytest.raises(FlatnessError, match="weight_decay must be a number, got 'lots'"):
        RunConfig(model="logreg", dataset="digits", weight_decay="lots", seed=0, epochs=1)
