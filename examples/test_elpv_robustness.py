"""Robustness suite for the default detector on real solar-cell images (ELPV).

The detector is AnomalyDINO on DINOv2 ViT-S/14 at 224 px with 4 reference cells. Without
pretrained weights on the machine it runs on a seeded random initialisation, and the limits
below describe that model. It separates defective from functional cells and is reasonably
calibrated after Platt scaling. It loses AUROC under FGSM, and its entropy does not flag attacks.
The strict xfails record what the model does not hold, so a change that makes it hold them
fails the suite until the limits are updated.

Measured by ``pytest examples`` on two CPU cores (seed 0, 32 images per class): clean AUROC
0.709 (mono) and 0.750 (poly); AUROC drop 0.116 and 0.146 at 2/255, 0.148 and 0.153 at 4/255;
calibrated ECE 0.150 and 0.135 on clean images; entropy gap at 8/255 -0.012 and -0.071 bits.
"""

from __future__ import annotations

import pytest


@pytest.mark.adrobust(eps=[0])
def test_detects_defects_on_clean_cells(adrobust_case):
    assert adrobust_case.auroc >= 0.65, f"clean AUROC {adrobust_case.auroc:.3f} on {adrobust_case.label}"


@pytest.mark.adrobust(eps=[0], max_ece=0.2)
def test_calibrated_on_clean_cells(adrobust_case):
    adrobust_case.check()


@pytest.mark.adrobust(eps=["2/255"], max_auroc_drop=0.25)
def test_small_budget_costs_bounded_auroc(adrobust_case):
    adrobust_case.check()


@pytest.mark.xfail(strict=True, reason="the random-init backbone loses more than 0.05 AUROC at 4/255 and 8/255")
@pytest.mark.adrobust(eps=["4/255", "8/255"], max_auroc_drop=0.05)
def test_robust_at_larger_budgets(adrobust_case):
    adrobust_case.check()


@pytest.mark.xfail(strict=True, reason="with random-init features the calibrated entropy does not rise under attack")
@pytest.mark.adrobust(eps=["8/255"], min_entropy_gap=0.05)
def test_entropy_flags_attacks(adrobust_case):
    adrobust_case.check()
