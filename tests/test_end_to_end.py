"""The real ViT-S/14 architecture on a handful of real ELPV cells, through the installed plugin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


@pytest.mark.slow
def test_vit_small_on_elpv_cells(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # An empty Hugging Face cache and offline mode: the run must fall back to random weights at once.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.adrobust(max_auroc_drop=1.0, max_ece=1.0)
        def test_cells(adrobust_case):
            adrobust_case.check()
        """
    )
    report_path = tmp_path / "report.json"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider",
        "--adrobust-datasets=elpv:mono",
        "--adrobust-eps=0,8/255",
        "--adrobust-shots=1",
        "--adrobust-max-images=3",
        "--adrobust-resolution=112",
        "--adrobust-device=cpu",
        f"--adrobust-report={report_path}",
    )
    result.assert_outcomes(passed=2, warnings=result.parseoutcomes().get("warnings", 0))
    result.stdout.fnmatch_lines(
        [
            "backbone vit_small_patch14_dinov2.lvd142m | weights random-init (seed 0) | device cpu | resolution 112",
            "elpv-mono 1-shot, attack score, 6 images (3 normal, 3 anomalous), clean AUROC *",
        ]
    )
    assert "no pretrained weights for 'vit_small_patch14_dinov2.lvd142m'" in result.stdout.str()

    report = json.loads(report_path.read_text())
    case = report["cases"][0]
    assert [budget["eps_text"] for budget in case["budgets"]] == ["0", "8/255"]
    assert case["passes"] == {"reference_forward": 1, "forward_backward": 6, "forward": 6 + 6 + 4}
    assert len(case["images"]) == 6
    assert all(image["image_id"].startswith("cell") for image in case["images"])
