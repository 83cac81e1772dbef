"""Tests of predictive entropy and attack-detection statistics against independent references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import entropy, norm

from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.metrics import binary_entropy, entropy_auroc, flag_rate, mann_whitney_p


def _pairwise_auroc(clean: list[float], attacked: list[float]) -> float:
    """Return the fraction of (attacked, clean) pairs ranked correctly, ties counting one half."""
    wins = 0.0
    for attacked_value in attacked:
        for clean_value in clean:
            if attacked_value > clean_value:
                wins += 1.0
            elif attacked_value == clean_value:
                wins += 0.5
    return wins / (len(clean) * len(attacked))


def _u_statistic(clean: list[float], attacked: list[float]) -> float:
    """Return the Mann-Whitney U of ``attacked`` by pairwise counting, ties counting one half."""
    return _pairwise_auroc(clean, attacked) * len(clean) * len(attacked)


def _exact_permutation_p(clean: list[float], attacked: list[float]) -> float:
    """Return P(U >= observed U) over every split of the pooled values into two groups."""
    pooled = clean + attacked
    observed = _u_statistic(clean, attacked)
    at_least = 0
    total = 0
    for attacked_indices in itertools.combinations(range(len(pooled)), len(attacked)):
        chosen = set(attacked_indices)
        group_attacked = [pooled[i] for i in chosen]
        group_clean = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        if _u_statistic(group_clean, group_attacked) >= observed - 1e-9:
            at_least += 1
        total += 1
    return at_least / total


def _normal_approximation_p(clean: list[float], attacked: list[float]) -> float:
    """Return the one-sided normal-approximation p-value with tie and continuity corrections."""
    n_clean = len(clean)
    n_attacked = len(attacked)
    n_total = n_clean + n_attacked
    u = _u_statistic(clean, attacked)

    tie_sum = 0
    for value in set(clean + attacked):
        tied = (clean + attacked).count(value)
        tie_sum += tied**3 - tied
    variance = n_clean * n_attacked / 12 * ((n_total + 1) - tie_sum / (n_total * (n_total - 1)))

    z = (u - n_clean * n_attacked / 2 - 0.5) / math.sqrt(variance)
    return float(norm.sf(z))


# Binary entropy


@pytest.mark.parametrize(
    ("probability", "expected"),
    [
        (0.0, 0.0),
        (1.0, 0.0),
        (0.5, 1.0),
        (0.25, 0.5 + 0.75 * math.log2(4 / 3)),
        (0.1, -(0.1 * math.log2(0.1) + 0.9 * math.log2(0.9))),
    ],
)
def test_entropy_hand_values(probability: float, expected: float) -> None:
    assert binary_entropy([probability])[0] == pytest.approx(expected, abs=1e-15)


def test_entropy_exact_at_endpoints() -> None:
    values = binary_entropy([0.0, 0.5, 1.0])
    assert values[0] == 0.0
    assert values[1] == 1.0
    assert values[2] == 0.0


def test_entropy_matches_scipy() -> None:
    probabilities = np.linspace(0.0, 1.0, 101)
    expected = [entropy([p, 1.0 - p], base=2) for p in probabilities]
    np.testing.assert_allclose(binary_entropy(probabilities), expected, atol=1e-12)


def test_entropy_shape_and_dtype() -> None:
    values = binary_entropy([0.1, 0.2, 0.3])
    assert values.shape == (3,)
    assert values.dtype == np.float64


@settings(max_examples=200, deadline=None)
@given(probabilities=st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=30))
def test_entropy_within_unit_interval(probabilities: list[float]) -> None:
    values = binary_entropy(probabilities)
    assert np.all(values >= 0.0)
    assert np.all(values <= 1.0)


@settings(max_examples=200, deadline=None)
@given(probability=st.floats(0.0, 1.0, allow_nan=False))
def test_entropy_symmetric(probability: float) -> None:
    forward = binary_entropy([probability])[0]
    mirrored = binary_entropy([1.0 - probability])[0]
    assert forward == pytest.approx(mirrored, abs=1e-12)


@pytest.mark.parametrize("probability", [-0.1, 1.1, float("nan"), float("inf")])
def test_entropy_invalid_probability(probability: float) -> None:
    with pytest.raises(AdrobustError, match="probs must contain"):
        binary_entropy([0.5, probability])


def test_entropy_two_dimensional_rejected() -> None:
    with pytest.raises(AdrobustError, match=r"probs must be a 1-D array .* shape \(2, 1\)"):
        binary_entropy([[0.5], [0.2]])


# Entropy AUROC


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entropy_auroc_matches_pairwise(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Rounding to two decimals creates ties between and within the groups.
    clean = np.round(rng.beta(2.0, 5.0, size=40), 2).tolist()
    attacked = np.round(rng.beta(4.0, 3.0, size=25), 2).tolist()
    expected = _pairwise_auroc(clean, attacked)
    assert entropy_auroc(clean, attacked) == pytest.approx(expected, abs=1e-12)


def test_entropy_auroc_identical_is_half() -> None:
    values = [0.1, 0.4, 0.4, 0.7, 0.9]
    assert entropy_auroc(values, values) == 0.5


def test_entropy_auroc_separated_is_one() -> None:
    assert entropy_auroc([0.1, 0.2, 0.3], [0.6, 0.8]) == 1.0


def test_entropy_auroc_reversed_is_zero() -> None:
    assert entropy_auroc([0.6, 0.8], [0.1, 0.2, 0.3]) == 0.0


def test_entropy_auroc_returns_python_float() -> None:
    assert type(entropy_auroc(np.array([0.1]), np.array([0.2]))) is float


def test_entropy_auroc_empty_rejected() -> None:
    with pytest.raises(AdrobustError, match="attacked_entropy must contain at least one value"):
        entropy_auroc([0.1, 0.2], [])


def test_entropy_auroc_nan_rejected() -> None:
    with pytest.raises(AdrobustError, match="clean_entropy must contain only finite"):
        entropy_auroc([0.1, float("nan")], [0.2])


# Mann-Whitney U


@pytest.mark.parametrize(
    ("clean", "attacked"),
    [
        ([0.11, 0.32, 0.25, 0.47, 0.05], [0.51, 0.29, 0.66, 0.38]),
        ([0.2, 0.4, 0.6], [0.1, 0.3, 0.5]),
        ([0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3]),
    ],
)
def test_mann_whitney_exact_permutation(clean: list[float], attacked: list[float]) -> None:
    expected = _exact_permutation_p(clean, attacked)
    assert mann_whitney_p(clean, attacked) == pytest.approx(expected, abs=1e-12)


def test_mann_whitney_ties_normal_approximation() -> None:
    rng = np.random.default_rng(11)
    clean = np.round(rng.normal(0.0, 1.0, size=30), 1).tolist()
    attacked = np.round(rng.normal(0.4, 1.0, size=30), 1).tolist()
    expected = _normal_approximation_p(clean, attacked)
    assert mann_whitney_p(clean, attacked) == pytest.approx(expected, rel=1e-9)


def test_mann_whitney_all_identical_is_one() -> None:
    assert mann_whitney_p([0.3, 0.3, 0.3], [0.3, 0.3]) == 1.0


def test_mann_whitney_separated_small_p() -> None:
    clean = [0.01 * i for i in range(8)]
    attacked = [1.0 + 0.01 * i for i in range(8)]
    # The exact p-value is 1 / C(16, 8), the chance of the most extreme split.
    assert mann_whitney_p(clean, attacked) == pytest.approx(1 / math.comb(16, 8))


def test_mann_whitney_one_sided() -> None:
    clean = [1.0 + 0.01 * i for i in range(8)]
    attacked = [0.01 * i for i in range(8)]
    assert mann_whitney_p(clean, attacked) == pytest.approx(1.0)


def test_mann_whitney_non_numeric_rejected() -> None:
    with pytest.raises(AdrobustError, match="clean must be a 1-D array of numbers"):
        mann_whitney_p(["low", "high"], [0.2])


def test_mann_whitney_two_dimensional_rejected() -> None:
    with pytest.raises(AdrobustError, match=r"attacked must be a 1-D array .* shape \(1, 2\)"):
        mann_whitney_p([0.1], [[0.2, 0.3]])


# Flag rate


def test_flag_rate_median_hand_case() -> None:
    rate, threshold = flag_rate([0.0, 1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 2.5, 5.0], quantile=0.5)
    assert threshold == 2.0
    # 2.0 equals the threshold and is not flagged, 2.5 and 5.0 are.
    assert rate == 0.5


def test_flag_rate_interpolated_threshold() -> None:
    # Linear interpolation: position 0.95 * 4 = 3.8 between 3.0 and 4.0.
    rate, threshold = flag_rate([0.0, 1.0, 2.0, 3.0, 4.0], [3.7, 3.9, 4.5])
    assert threshold == pytest.approx(3.8)
    assert rate == pytest.approx(2 / 3)


def test_flag_rate_quantile_bounds() -> None:
    clean = [0.2, 0.4, 0.6]
    _, lowest = flag_rate(clean, [0.5], quantile=0.0)
    _, highest = flag_rate(clean, [0.5], quantile=1.0)
    assert lowest == 0.2
    assert highest == 0.6


def test_flag_rate_identical_constant_zero() -> None:
    rate, threshold = flag_rate([0.3, 0.3], [0.3, 0.3, 0.3])
    assert threshold == pytest.approx(0.3)
    assert rate == 0.0


def test_flag_rate_returns_python_floats() -> None:
    rate, threshold = flag_rate(np.array([0.1, 0.2]), np.array([0.3]))
    assert type(rate) is float
    assert type(threshold) is float


@pytest.mark.parametrize("quantile", [-0.1, 1.5, float("nan"), True, "0.95", None])
def test_flag_rate_invalid_quantile(quantile: object) -> None:
    with pytest.raises(AdrobustError, match="quantile must be a number in"):
        flag_rate([0.1, 0.2], [0.3], quantile=quantile)  # type: ignore[arg-type]


def test_flag_rate_infinite_rejected() -> None:
    with pytest.raises(AdrobustError, match="attacked_entropy must contain only finite"):
        flag_rate([0.1, 0.2], [float("inf")])
