"""Predictive entropy and tests of whether it separates attacked from clean inputs.

An attack that pushes scores towards the decision boundary raises the entropy of the predicted
probability. These metrics measure how well that rise flags attacked inputs.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
import numpy.typing as npt
from scipy.special import entr
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score

from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.metrics.detection import _as_float_array, _as_probabilities

__all__ = ["binary_entropy", "entropy_auroc", "flag_rate", "mann_whitney_p"]


def binary_entropy(probs: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Compute the predictive entropy of binary probabilities in bits.

    Parameters
    ----------
    probs : array-like of float, shape (n,)
        Probabilities of being anomalous, in [0, 1].

    Returns
    -------
    numpy.ndarray of float64, shape (n,)
        ``-p log2(p) - (1 - p) log2(1 - p)``, exactly 0 at p = 0 and p = 1 and exactly 1 at
        p = 0.5.

    Raises
    ------
    AdrobustError
        If ``probs`` is not a valid 1-D array of probabilities.
    """
    probability_array = _as_probabilities("probs", probs)

    # scipy's entr defines 0 * log(0) as 0, which gives the exact zeros at p = 0 and p = 1.
    entropy_nats = entr(probability_array) + entr(1.0 - probability_array)

    # Rounding near p = 0.5 could land an ulp outside [0, 1] bits.
    return np.clip(entropy_nats / math.log(2.0), 0.0, 1.0)


def entropy_auroc(clean_entropy: npt.ArrayLike, attacked_entropy: npt.ArrayLike) -> float:
    """Compute the AUROC of entropy as a detector of attacked inputs.

    Attacked inputs are the positive class, so 1.0 means every attacked input has a higher
    entropy than every clean one, and 0.5 means entropy does not separate them.

    Parameters
    ----------
    clean_entropy : array-like of float, shape (n,)
        Entropy of clean inputs.
    attacked_entropy : array-like of float, shape (m,)
        Entropy of attacked inputs. ``m`` may differ from ``n``.

    Returns
    -------
    float
        AUROC in [0, 1] from :func:`sklearn.metrics.roc_auc_score`, with ties counted as one
        half, so identical distributions give 0.5.

    Raises
    ------
    AdrobustError
        If either input is not a non-empty 1-D array of finite numbers.
    """
    clean = _as_float_array("clean_entropy", clean_entropy)
    attacked = _as_float_array("attacked_entropy", attacked_entropy)

    labels = np.concatenate(
        [np.zeros(clean.size, dtype=np.int64), np.ones(attacked.size, dtype=np.int64)]
    )
    values = np.concatenate([clean, attacked])
    return float(roc_auc_score(labels, values))


def mann_whitney_p(clean: npt.ArrayLike, attacked: npt.ArrayLike) -> float:
    """Test whether attacked values tend to be larger than clean values.

    Runs the one-sided Mann-Whitney U test of :func:`scipy.stats.mannwhitneyu` with
    ``alternative="greater"`` on ``(attacked, clean)``, with scipy's default method choice
    (exact for small samples without ties, else the normal approximation with tie and continuity
    corrections).

    Parameters
    ----------
    clean : array-like of float, shape (n,)
        Values of clean inputs, for example their entropy.
    attacked : array-like of float, shape (m,)
        Values of attacked inputs. ``m`` may differ from ``n``.

    Returns
    -------
    float
        One-sided p-value in [0, 1]. When every value in both samples is identical the test has
        no information and the tie-corrected variance of U is 0, so this function returns 1.0
        without calling scipy.

    Raises
    ------
    AdrobustError
        If either input is not a non-empty 1-D array of finite numbers.
    """
    clean_array = _as_float_array("clean", clean)
    attacked_array = _as_float_array("attacked", attacked)

    all_values = np.concatenate([clean_array, attacked_array])
    if np.all(all_values == all_values[0]):
        return 1.0

    result = mannwhitneyu(attacked_array, clean_array, alternative="greater")
    return float(result.pvalue)


def flag_rate(
    clean_entropy: npt.ArrayLike, attacked_entropy: npt.ArrayLike, quantile: float = 0.95
) -> tuple[float, float]:
    """Compute the share of attacked inputs whose entropy exceeds a clean-entropy quantile.

    The threshold is ``numpy.quantile(clean_entropy, quantile)`` with numpy's default linear
    interpolation, so about ``1 - quantile`` of clean inputs would be flagged as well.

    Parameters
    ----------
    clean_entropy : array-like of float, shape (n,)
        Entropy of clean inputs, which sets the threshold.
    attacked_entropy : array-like of float, shape (m,)
        Entropy of attacked inputs.
    quantile : float, default 0.95
        Quantile of the clean entropy used as threshold, in [0, 1].

    Returns
    -------
    rate : float
        Fraction in [0, 1] of attacked inputs whose entropy is strictly greater than the
        threshold.
    threshold : float
        The threshold, in the units of the entropy (bits for :func:`binary_entropy`).

    Raises
    ------
    AdrobustError
        If either input is not a non-empty 1-D array of finite numbers, or ``quantile`` is not
        a number in [0, 1].
    """
    clean = _as_float_array("clean_entropy", clean_entropy)
    attacked = _as_float_array("attacked_entropy", attacked_entropy)

    quantile_is_real = isinstance(quantile, Real) and not isinstance(quantile, bool)
    if not quantile_is_real or not 0.0 <= quantile <= 1.0:
        raise AdrobustError(
            f"quantile must be a number in [0, 1]; received {quantile!r}. Pass a value such "
            "as 0.95 to flag inputs above the 95th percentile of clean entropy."
        )

    threshold = float(np.quantile(clean, float(quantile)))
    rate = float(np.mean(attacked > threshold))
    return rate, threshold
