"""Tests for parsing, validating and resolving the plugin's settings."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from pytest_adrobust.detectors import DEFAULT_BACKBONE
from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.settings import OPTIONS_BY_NAME, Budget, check_marker_kwargs, parse_eps, resolve

SOURCE_LABELS = ("marker", "{flag}", "ini {ini}")


def parse(name: str, value: object) -> object:
    """Return ``value`` parsed by the parser of the setting called ``name``."""
    return OPTIONS_BY_NAME[name].parse(value)


# parse_eps


@pytest.mark.parametrize(
    ("value", "number", "text"),
    [
        ("4/255", 4 / 255, "4/255"),
        ("0", 0.0, "0"),
        ("0.03", 0.03, "0.03"),
        (0.5, 0.5, "0.5"),
        (1, 1.0, "1"),
        (" 8 / 255 ", 8 / 255, "8/255"),
        (8 / 255, 8 / 255, "8/255"),
        (0, 0.0, "0"),
        ("1e-2", 0.01, "0.01"),
        ("1", 1.0, "1"),
    ],
)
def test_parse_eps_valid(value: object, number: float, text: str) -> None:
    budget = parse_eps(value)

    assert budget.value == number
    assert budget.text == text
    assert str(budget) == text


def test_parse_eps_budget_passthrough() -> None:
    budget = Budget(0.25, "0.25")

    assert parse_eps(budget) is budget


def test_parse_eps_reducible_fraction_text() -> None:
    assert parse_eps(6 / 255).text == "6/255"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("-1/255", "'-1/255'"),
        ("2", "'2'"),
        ("abc", "'abc'"),
        ("4/0", "'4/0'"),
        ("", "''"),
        ("1/2/3", "'1/2/3'"),
        (True, "True"),
        (None, "None"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        (-0.01, "-0.01"),
        (1.5, "1.5"),
    ],
)
def test_parse_eps_invalid(value: object, shown: str) -> None:
    with pytest.raises(AdrobustError, match=f"invalid eps {re.escape(shown)}"):
        parse_eps(value)


def test_parse_eps_zero_denominator_reason() -> None:
    with pytest.raises(AdrobustError, match="the denominator is zero"):
        parse_eps("4/0")


def test_eps_list_sorted_unique() -> None:
    budgets = parse("eps", "0,4/255, 2/255")

    assert [budget.text for budget in budgets] == ["0", "2/255", "4/255"]
    assert [budget.value for budget in budgets] == [0.0, 2 / 255, 4 / 255]


def test_eps_list_drops_duplicates() -> None:
    budgets = parse("eps", "4/255, 0, 4/255, 0.0")

    assert [budget.value for budget in budgets] == [0.0, 4 / 255]


def test_eps_list_from_numbers() -> None:
    budgets = parse("eps", [8 / 255, 0])

    assert [budget.text for budget in budgets] == ["0", "8/255"]


def test_eps_list_empty_rejected() -> None:
    with pytest.raises(AdrobustError, match="eps is empty"):
        parse("eps", " , ")


def test_eps_list_bad_item_rejected() -> None:
    with pytest.raises(AdrobustError, match="invalid eps '2/3/4'"):
        parse("eps", "0,2/3/4")


# resolve


def test_resolve_first_source_wins() -> None:
    sources = [{"shots": "8"}, {"shots": "2", "attack": "surrogate"}, {"shots": "4", "attack": "score"}]

    values = resolve(sources, SOURCE_LABELS)

    assert values["shots"] == (8,)
    assert values["attack"] == "surrogate"


def test_resolve_none_is_a_value() -> None:
    values = resolve([{"max_images": None}, {"max_images": "3"}, {}], SOURCE_LABELS)

    assert values["max_images"] is None


def test_resolve_missing_key_is_unset() -> None:
    values = resolve([{}, {"seed": "3"}, {}], SOURCE_LABELS)

    assert values["seed"] == 3


def test_resolve_defaults_when_unset() -> None:
    values = resolve([{}, {}, {}], SOURCE_LABELS)

    assert [budget.text for budget in values["eps"]] == ["0", "2/255", "4/255", "8/255"]
    assert values["shots"] == (4,)
    assert values["attack"] == "score"
    assert values["seed"] == 0
    assert values["max_images"] == 32
    assert values["max_auroc_drop"] is None
    assert values["backbone"] == DEFAULT_BACKBONE
    assert values["weights"] == "auto"
    assert values["resolution"] == 448


def test_resolve_error_names_flag() -> None:
    with pytest.raises(AdrobustError, match=r"^--adrobust-eps: invalid eps '2'"):
        resolve([{}, {"eps": "2"}, {"eps": "0"}], SOURCE_LABELS)


def test_resolve_error_names_ini_key() -> None:
    with pytest.raises(AdrobustError, match=r"^ini adrobust_max_images: invalid max_images '1'"):
        resolve([{}, {}, {"max_images": "1"}], SOURCE_LABELS)


def test_resolve_error_names_marker() -> None:
    with pytest.raises(AdrobustError, match=r"^marker: invalid attack 'pgd'"):
        resolve([{"attack": "pgd"}, {"attack": "score"}, {}], SOURCE_LABELS)


# Integer and list settings


@pytest.mark.parametrize(("value", "expected"), [("4", (4,)), ("4, 8,4", (4, 8)), ([16, 1], (1, 16)), (2, (2,))])
def test_shots_parsed(value: object, expected: tuple[int, ...]) -> None:
    assert parse("shots", value) == expected


@pytest.mark.parametrize(("value", "shown"), [("0", "'0'"), ("x", "'x'"), ("2.5", "'2.5'"), (True, "True")])
def test_shots_invalid(value: object, shown: str) -> None:
    with pytest.raises(AdrobustError, match=f"invalid shots {re.escape(shown)}: use an integer of at least 1"):
        parse("shots", value)


def test_shots_empty_rejected() -> None:
    with pytest.raises(AdrobustError, match="shots is empty"):
        parse("shots", "")


@pytest.mark.parametrize(("value", "expected"), [("all", None), ("ALL", None), (None, None), ("2", 2), (64, 64)])
def test_max_images_parsed(value: object, expected: int | None) -> None:
    assert parse("max_images", value) == expected


@pytest.mark.parametrize(("value", "shown"), [(1, "1"), ("1", "'1'"), (0, "0"), ("many", "'many'")])
def test_max_images_invalid(value: object, shown: str) -> None:
    # Two-fold cross-fitting puts at least one image of each class in each fold.
    with pytest.raises(AdrobustError, match=f"invalid max_images {re.escape(shown)}: use an integer of at least 2"):
        parse("max_images", value)


def test_seed_negative_rejected() -> None:
    with pytest.raises(AdrobustError, match="invalid seed '-1'"):
        parse("seed", "-1")


def test_resolution_below_patch_rejected() -> None:
    with pytest.raises(AdrobustError, match="invalid resolution '13': use an integer of at least 14"):
        parse("resolution", "13")


# Choices, devices and thresholds


@pytest.mark.parametrize(("value", "expected"), [("score", "score"), (" surrogate ", "surrogate")])
def test_attack_choices_parsed(value: str, expected: str) -> None:
    assert parse("attack", value) == expected


def test_attack_unknown_rejected() -> None:
    with pytest.raises(AdrobustError, match="invalid attack 'pgd': use one of score, surrogate"):
        parse("attack", "pgd")


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", " cpu "])
def test_device_parsed(value: str) -> None:
    assert parse("device", value) == value.strip()


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:x", "cuda0", "cpu,cuda", ""])
def test_device_invalid(value: str) -> None:
    with pytest.raises(AdrobustError, match=f"invalid device {re.escape(repr(value))}: use auto, cpu, cuda or cuda:N"):
        parse("device", value)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("max_auroc_drop", "0.05", 0.05),
        ("max_auroc_drop", 0, 0.0),
        ("max_auroc_drop", "1", 1.0),
        ("max_ece", 0.1, 0.1),
        ("max_ece", "none", None),
        ("max_ece", "", None),
        ("max_ece", None, None),
        ("min_entropy_gap", "-0.5", -0.5),
        ("min_entropy_gap", -1, -1.0),
    ],
)
def test_threshold_parsed(name: str, value: object, expected: float | None) -> None:
    assert parse(name, value) == expected


@pytest.mark.parametrize(
    ("name", "value", "interval"),
    [
        ("max_auroc_drop", "1.5", "[0, 1]"),
        ("max_auroc_drop", -0.1, "[0, 1]"),
        ("max_ece", "nan", "[0, 1]"),
        ("max_ece", "abc", "[0, 1]"),
        ("max_ece", True, "[0, 1]"),
        ("min_entropy_gap", "-1.5", "[-1, 1]"),
        ("min_entropy_gap", "inf", "[-1, 1]"),
    ],
)
def test_threshold_invalid(name: str, value: object, interval: str) -> None:
    expected = f"invalid {name} {re.escape(repr(value))}: use a number in {re.escape(interval)}"

    with pytest.raises(AdrobustError, match=expected):
        parse(name, value)


# Datasets, weights and report


def test_datasets_parsed_unique() -> None:
    assert parse("datasets", "elpv:mono, folder:/data/cables,elpv:mono") == ("elpv:mono", "folder:/data/cables")


def test_datasets_unknown_kind_rejected() -> None:
    with pytest.raises(AdrobustError, match="unknown kind 'mvtec2'") as caught:
        parse("datasets", "elpv:mono,mvtec2:bottle")

    message = str(caught.value)
    assert "elpv:mono" in message
    assert "elpv:poly" in message
    assert "folder:PATH" in message


def test_datasets_empty_rejected() -> None:
    with pytest.raises(AdrobustError, match="datasets is empty"):
        parse("datasets", " ")


def test_weights_setting_validated(tmp_path: Path) -> None:
    with pytest.raises(AdrobustError, match="weights file not found"):
        parse("weights", str(tmp_path / "absent.pth"))


def test_report_directory_rejected(tmp_path: Path) -> None:
    with pytest.raises(AdrobustError, match="it is a directory"):
        parse("report", str(tmp_path))


def test_report_missing_parent_rejected(tmp_path: Path) -> None:
    with pytest.raises(AdrobustError, match="does not exist"):
        parse("report", str(tmp_path / "absent" / "report.json"))


def test_report_path_parsed(tmp_path: Path) -> None:
    assert parse("report", str(tmp_path / "report.json")) == tmp_path / "report.json"


# check_marker_kwargs


PER_TEST_NAMES = (
    "datasets", "eps", "shots", "attack", "seed", "max_images", "max_auroc_drop", "max_ece", "min_entropy_gap",
)


@pytest.mark.parametrize("name", PER_TEST_NAMES)
def test_marker_per_test_keyword_accepted(name: str) -> None:
    # The check looks at keyword names only, so the value need not be valid here.
    assert check_marker_kwargs({name: "x"}) is None


def test_marker_unknown_keyword_rejected() -> None:
    with pytest.raises(AdrobustError, match="unknown adrobust marker keyword 'epsilon'") as caught:
        check_marker_kwargs({"eps": "0", "epsilon": "4/255"})

    message = str(caught.value)
    assert "use datasets, eps, shots" in message
    assert "min_entropy_gap" in message


@pytest.mark.parametrize("name", ["backbone", "device", "weights", "resolution", "batch_size", "report"])
def test_marker_session_keyword_rejected(name: str) -> None:
    flag = "--adrobust-" + name.replace("_", "-")

    with pytest.raises(AdrobustError, match=f"{name!r} applies to the whole session") as caught:
        check_marker_kwargs({name: "x"})

    message = str(caught.value)
    assert flag in message
    assert f"adrobust_{name}" in message
