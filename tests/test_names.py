"""The display-name table: every identifier the code can hand a page has a name, names are
words (no raw identifier survives in them), and tables say why a value is missing."""

import numpy as np
import pandas as pd
import pytest

from flatness import data, models
from flatness.analysis import names, plotting
from flatness.chapters.estimators import ADAPTIVE_METHODS, FIXED_METHODS
from flatness.training import recipes


def test_every_model_data_set_recipe_and_estimator_has_a_name():
    identifiers = [
        *models.names(),
        *data.DATASETS,
        *recipes.RECIPES,
        *FIXED_METHODS,
        *(m for methods in ADAPTIVE_METHODS.values() for m in methods if m != "auto"),
    ]
    for identifier in identifiers:
        shown = names.display(identifier)
        assert shown != identifier or identifier in names.WORDS, identifier
        assert names.raw_identifiers(shown) == [], (identifier, shown)


@pytest.mark.parametrize(
    "identifier, shown",
    [
        ("lambda_max", "λ_max"), ("weight_decay", "weight decay"), ("test_acc", "test accuracy"),
        ("lenet5", "LeNet-5"), ("allcnn", "All-CNN-C"), ("vgg16-bn", "VGG-16-BN"),
        ("preresnet-110", "PreResNet-110"), ("preresnet-56", "PreResNet-56"),
        ("wrn-28-10", "WRN-28-10"), ("mlp-10-100", "MLP 10-100"),
        ("mlp-512-256-tanh", "MLP 512-256 (tanh)"), ("logreg", "softmax regression"),
        ("digits", "scikit-learn digits"), ("mnist", "MNIST"), ("cifar100", "CIFAR-100"),
        ("fashion-mnist", "Fashion-MNIST"), ("sgd", "SGD"), ("adamw", "AdamW"),
        ("gadam", "Gadam"), ("swa", "SWA"), ("sgd+avg", "SGD + averaging"),
        ("hutchinson", "Hutchinson"), ("hutch++", "Hutch++"), ("slq", "SLQ"),
        ("lanczos", "Lanczos"), ("abs_rel_error", "abs rel error"), ("λ_max", "λ_max"), (3, "3"),
    ],
)  # fmt: skip
def test_display_names(identifier, shown):
    assert names.display(identifier) == shown


def test_every_name_of_the_table_is_words():
    for identifier, shown in names.NAMES.items():
        assert names.raw_identifiers(shown) == [], (identifier, shown)
        assert names.display(shown) == shown, shown  # naming twice changes nothing


def test_identifiers_inside_text_are_named_but_words_and_code_are_not():
    assert names.words("allcnn on cifar100") == "All-CNN-C on CIFAR-100"
    assert names.words("lenet5, wd 0.01") == "LeNet-5, weight decay 0.01"
    assert names.words("hutch++ (7), hutchinson (3)") == "Hutch++ (7), Hutchinson (3)"
    assert names.words("the trace of the digits, seed 0") == "the trace of the digits, seed 0"
    assert names.words("run `lenet5` on mnist") == "run `lenet5` on MNIST"
    assert names.words("fashion-mnist, not mnist") == "Fashion-MNIST, not MNIST"


def test_raw_identifiers_are_found_in_text_and_names_are_not():
    text = "λ_max and lambda_max; LeNet-5 and lenet5 on cifar100; max_probes; MNIST, Fashion-MNIST"
    assert names.raw_identifiers(text) == ["lambda_max", "lenet5", "cifar100", "max_probes"]
    assert names.raw_identifiers("wrn-16-4 beside preresnet-20") == ["wrn-16-4", "preresnet-20"]


def test_sentences_start_with_a_capital():
    assert names.sentence("whether weight decay 0.01 is sharper") == (
        "Whether weight decay 0.01 is sharper"
    )
    assert names.sentence("**hutchinson** first") == "**Hutchinson** first"
    assert names.sentence("`rtol` is code") == "`rtol` is code"
    assert names.sentence("") == ""


def test_plotting_reads_the_same_table():
    assert plotting.name("weight_decay") == names.display("weight_decay") == "weight decay"
    assert plotting.label("lambda_max") == names.tex("lambda_max") == r"$\lambda_{\max}$"
    assert plotting.name("arm") == "setting" and plotting.label("test_acc") == "test accuracy"


def test_a_table_is_named_formatted_and_says_why_a_value_is_missing():
    df = pd.DataFrame(
        {
            "measure": ["trace", "frobenius", "lambda_max"],
            "method": ["hutch++", "hutchinson", "lanczos"],
            "weight_decay": [0.0, 1e-4, 5e-4],
            "stderr": [0.0123, np.nan, None],
            "converged": [True, False, np.bool_(True)],
        }
    )
    shown = names.frame(
        df,
        formats={"stderr": "{:.2g}", "weight_decay": "{:g}"},
        missing={"stderr": ["", "one probe", "not a mean"]},
        columns={"stderr": "standard error (1)"},
    )
    assert list(shown.columns) == [
        "measure", "method", "weight decay", "standard error (1)", "converged"
    ]  # fmt: skip
    assert list(shown["measure"]) == ["Tr H", "‖H‖_F", "λ_max"]
    assert list(shown["method"]) == ["Hutch++", "Hutchinson", "Lanczos"]
    assert list(shown["weight decay"]) == ["0", "0.0001", "0.0005"]
    assert list(shown["standard error (1)"]) == ["0.012", "— (one probe)", "— (not a mean)"]
    assert list(shown["converged"]) == ["yes", "no", "yes"]
    one_reason = names.frame(df[["stderr"]], missing="not measured")
    assert list(one_reason["stderr"]) == ["0.0123", "— (not measured)", "— (not measured)"]
    html = names.table(df, missing="not measured").to_html()
    assert "nan" not in html.lower() and "None" not in html


def test_a_missing_value_without_a_reason_is_refused():
    df = pd.DataFrame({"s.e.": [1.0, float("nan")]})
    with pytest.raises(ValueError, match=r"'s.e.' has missing values in rows \[1\]"):
        names.frame(df)
    with pytest.raises(ValueError, match="rows"):
        names.frame(df, missing={"s.e.": ["why", None]})
