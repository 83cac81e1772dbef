"""Robustness gate for the team's own detector, with the same fixtures as the default one."""

from __future__ import annotations

import pytest


@pytest.mark.adrobust(max_auroc_drop=1.0)
def test_partnet_auroc_drop(adrobust_case):
    adrobust_case.check()
