"""Tests of the ECE noise floor against enumeration, sampling and the binomial closed form."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.metrics import expected_calibration_error, expected_calibration_error_floor


def _enumerated_floor(probabilities: npt.NDArray[np.float64], n_bins: int) -> float:
    """Average the ECE over all 2^N label vectors, each weighted by its Bernoulli probability."""
    total = 0.0
    for labels in itertools.product((0, 1), repeat=probabilities.size):
        label_array = np.array(labels, dtype=np.int64)
        weight = float(np.prod(np.where(label_array == 1, probabilities, 1.0 - probabilities)))
        if weight == 0.0:
            continue
        total += weight * expected_calibration_error(label_array, probabilities, n_bins)
    return total


def _probabilities_with_edges(seed: int, size: int, n_bins: int) -> npt.NDArray[np.float64]:
    """Draw uniform probabilities and replace some with bin edges, 0 and 1."""
    rng = np.random.default_rng(seed)
    probabilities = rng.uniform(0.0, 1.0, size=size)

    # Values on the edges check that the floor assigns them to the same bins as the ECE does.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    replaced = rng.choice(size, size=size // 3, replace=False)
    probabilities[replaced] = rng.choice(edges, size=replaced.size)
    return probabilities


@pytest.mark.parametrize(
    ("seed", "size", "n_bins"),
    [(0, 1, 15), (1, 4, 1), (2, 7, 3), (3, 9, 15), (4, 10, 4), (5, 10, 2)],
)
def test_floor_matches_enumeration(seed: int, size: int, n_bins: int) -> None:
    probabilities = _probabilities_with_edges(seed, size, n_bins)

    floor = expected_calibration_error_floor(probabilities, n_bins)

    assert floor == pytest.approx(_enumerated_floor(probabilities, n_bins), rel=0.0, abs=1e-12)


def test_floor_single_probability_hand_case() -> None:
    # One image with probability p has ECE 1 - p with probability p and p otherwise.
    assert expected_calibration_error_floor([0.3]) == pytest.approx(2 * 0.3 * 0.7, abs=1e-15)


def test_floor_agrees_with_monte_carlo() -> None:
    rng = np.random.default_rng(20240611)
    probabilities = rng.uniform(0.0, 1.0, size=200)
    draws = 3000

    samples = np.empty(draws)
    for draw in range(draws):
        labels = (rng.uniform(0.0, 1.0, size=probabilities.size) < probabilities).astype(np.int64)
        samples[draw] = expected_calibration_error(labels, probabilities)
    standard_error = float(np.std(samples, ddof=1)) / math.sqrt(draws)

    floor = expected_calibration_error_floor(probabilities)

    assert abs(floor - float(np.mean(samples))) < 4.0 * standard_error


@pytest.mark.parametrize("n_bins", [1, 2, 15])
def test_floor_zero_for_certain_probabilities(n_bins: int) -> None:
    probabilities = [0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]

    assert expected_calibration_error_floor(probabilities, n_bins) == 0.0


@pytest.mark.parametrize(("size", "probability"), [(1, 0.5), (13, 0.37), (50, 0.05), (400, 0.8)])
def test_floor_matches_binomial_closed_form(size: int, probability: float) -> None:
    successes = np.arange(size + 1)
    pmf = binom.pmf(successes, size, probability)
    closed_form = float(np.sum(pmf * np.abs(successes - size * probability))) / size

    floor = expected_calibration_error_floor(np.full(size, probability))

    assert floor == pytest.approx(closed_form, rel=1e-12, abs=1e-15)


def test_floor_decreases_with_size() -> None:
    # Repeating one set of probabilities keeps their distribution fixed while N grows.
    base = np.random.default_rng(7).uniform(0.0, 1.0, size=25)
    floors = [expected_calibration_error_floor(np.tile(base, repeats)) for repeats in (1, 4, 16)]

    assert floors[1] < floors[0]
    assert floors[2] < floors[1]


def test_floor_scales_as_inverse_sqrt_size() -> None:
    # Each bin's E|S_b - P_b| tends to sqrt(2 / pi) times its standard deviation, which grows as
    # sqrt(N), so quadrupling N should about halve the floor.
    base = np.random.default_rng(11).uniform(0.0, 1.0, size=25)

    floor_small = expected_calibration_error_floor(np.tile(base, 16))
    floor_large = expected_calibration_error_floor(np.tile(base, 64))

    assert floor_large / floor_small == pytest.approx(0.5, abs=0.02)


def test_floor_returns_python_float() -> None:
    assert type(expected_calibration_error_floor([0.2, 0.9])) is float


def test_floor_numpy_integer_n_bins_accepted() -> None:
    probabilities = [0.1, 0.45, 0.8]

    expected = expected_calibration_error_floor(probabilities, 10)

    assert expected_calibration_error_floor(probabilities, np.int64(10)) == expected


@pytest.mark.parametrize(
    ("probs", "fragment"),
    [
        ([[0.1, 0.2]], "shape (1, 2)"),
        ([], "empty array []"),
        ([0.2, float("nan")], "nan"),
        ([0.2, float("inf")], "inf"),
        ([0.2, 1.5], "1.5"),
        ([-0.1, 0.3], "-0.1"),
        (["low", "high"], "['low', 'high']"),
    ],
)
def test_floor_invalid_probs_rejected(probs: object, fragment: str) -> None:
    with pytest.raises(AdrobustError, match=rf"^probs .*{re.escape(fragment)}"):
        expected_calibration_error_floor(probs)  # type: ignore[arg-type]


@pytest.mark.parametrize("n_bins", [0, -3, True, 2.5, "15", None])
def test_floor_invalid_n_bins_rejected(n_bins: object) -> None:
    with pytest.raises(AdrobustError, match=rf"^n_bins .*received {re.escape(repr(n_bins))}\."):
        expected_calibration_error_floor([0.2, 0.7], n_bins)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    probabilities=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=80),
    n_bins=st.integers(min_value=1, max_value=30),
)
def test_floor_within_unit_interval(probabilities: list[float], n_bins: int) -> None:
    floor = expected_calibration_error_floor(probabilities, n_bins)

    assert floor >= 0.0
    assert floor <= 1.0
