"""Tests of the report plots on small synthetic report dicts."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.calibration import calibration_curve

from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.metrics import expected_calibration_error
from pytest_adrobust.plots import (
    reliability_curves,
    reliability_points,
    require_matplotlib,
    write_plots,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INSTALL_COMMAND = "pip install 'pytest-adrobust[plots]'"


def make_case(
    dataset: str = "elpv-mono",
    shots: int = 4,
    attack: str = "score",
    eps_texts: tuple[str, ...] = ("0", "4/255", "8/255"),
    n_images: int = 12,
    seed: int = 0,
) -> dict[str, Any]:
    """Build a case record shaped like ``report["cases"][i]``, with one budget per eps text."""
    rng = np.random.default_rng(seed)
    eps_values = {text: float(Fraction(text)) for text in eps_texts}

    images = []
    for index in range(n_images):
        label = index % 2
        clean_score = float(rng.normal(1.0 + label, 0.4))
        attacked = {}
        for text, eps in eps_values.items():
            # Positive budgets push anomalous scores down and normal scores up, as an attack would.
            score = clean_score + (10.0 * eps) * (1 - 2 * label)
            attacked[text] = {"score": score, "probability": float(rng.uniform())}
        images.append(
            {
                "label": label,
                "clean_score": clean_score,
                "clean_probability": float(rng.uniform()),
                "attacked": attacked,
            }
        )

    budgets = [
        {"eps": eps, "eps_text": text, "auroc": 0.9 - eps, "ece": 0.1, "ece_raw": 0.2}
        for text, eps in eps_values.items()
    ]
    return {
        "dataset": dataset,
        "shots": shots,
        "attack": attack,
        "clean_auroc": 0.9,
        "budgets": budgets,
        "images": images,
    }


def make_report(*cases: dict[str, Any]) -> dict[str, Any]:
    """Wrap cases in a report dict that has the top-level fields of a real report."""
    return {"schema": "pytest-adrobust-report", "schema_version": 1, "cases": list(cases)}


@pytest.fixture(scope="module")
def two_case_report() -> dict[str, Any]:
    """Report with an attacked case and a case that has only the clean budget."""
    return make_report(
        make_case(),
        make_case(dataset="visa/pcb1", shots=8, attack="surrogate", eps_texts=("0",), seed=1),
    )


def test_png_file_names_and_count(tmp_path: Path, two_case_report: dict[str, Any]) -> None:
    paths = write_plots(two_case_report, tmp_path / "plots", "png")

    names = [path.name for path in paths]
    assert names == [
        "reliability-elpv-mono-4shot-score.png",
        "entropy-elpv-mono-4shot-score.png",
        "reliability-visa_pcb1-8shot-surrogate.png",
        "auroc-vs-eps-elpv-mono.png",
        "auroc-vs-eps-visa_pcb1.png",
    ]
    assert sorted(path.name for path in (tmp_path / "plots").iterdir()) == sorted(names)
    for path in paths:
        assert path.read_bytes().startswith(PNG_SIGNATURE), path.name


def test_svg_files_parse_as_xml(tmp_path: Path, two_case_report: dict[str, Any]) -> None:
    paths = write_plots(two_case_report, tmp_path, "svg")

    assert len(paths) == 5
    for path in paths:
        assert path.suffix == ".svg"
        root = ElementTree.parse(path).getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg", path.name


def test_svg_bytes_repeat_exactly(tmp_path: Path, two_case_report: dict[str, Any]) -> None:
    first = write_plots(two_case_report, tmp_path / "first", "svg")
    second = write_plots(two_case_report, tmp_path / "second", "svg")

    for first_path, second_path in zip(first, second, strict=True):
        first_bytes = first_path.read_bytes()
        assert first_bytes == second_path.read_bytes(), first_path.name
        assert b"<dc:date>" not in first_bytes, first_path.name


@pytest.mark.parametrize("image_format", ["jpeg", "PNG", "pdf", "", None])
def test_unknown_format_raises(tmp_path: Path, image_format: Any) -> None:
    with pytest.raises(AdrobustError, match=rf"received {image_format!r}"):
        write_plots(make_report(make_case()), tmp_path / "plots", image_format)

    assert not (tmp_path / "plots").exists()


def test_path_is_file_raises(tmp_path: Path) -> None:
    target = tmp_path / "plots.png"
    target.write_bytes(b"not a directory")

    with pytest.raises(AdrobustError, match="plots.png") as raised:
        write_plots(make_report(make_case()), target, "png")

    assert "is not a directory" in str(raised.value)
    assert target.read_bytes() == b"not a directory"


def test_missing_matplotlib_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes "import matplotlib" raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)

    with pytest.raises(AdrobustError, match="matplotlib") as raised:
        require_matplotlib()
    assert INSTALL_COMMAND in str(raised.value)

    with pytest.raises(AdrobustError, match="matplotlib"):
        write_plots(make_report(make_case()), tmp_path / "plots", "png")
    assert not (tmp_path / "plots").exists()


def test_import_leaves_matplotlib_unloaded() -> None:
    code = (
        "import sys\n"
        "import pytest_adrobust.plots\n"
        "import pytest_adrobust.plugin\n"
        "import pytest_adrobust.report\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'matplotlib'))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)

    assert result.stdout.strip() == "[]"


def test_none_values_skipped(tmp_path: Path) -> None:
    case = make_case(n_images=12)
    case["images"][0]["clean_score"] = None
    case["images"][1]["clean_probability"] = None
    case["images"][2]["attacked"]["4/255"] = {"score": None, "probability": None}
    for image in case["images"]:
        image["attacked"]["8/255"] = {"score": None, "probability": None}
    case["budgets"][1]["auroc"] = None

    raw_clean, raw_4, raw_8 = reliability_curves(case, "raw")
    assert raw_clean.n_skipped == 1
    assert raw_clean.points is not None
    assert int(raw_clean.points.counts.sum()) == 11
    assert raw_4.n_skipped == 1
    assert raw_4.points is not None
    assert int(raw_4.points.counts.sum()) == 11
    assert raw_8.n_skipped == 12
    assert raw_8.points is None

    calibrated_clean, calibrated_4, _ = reliability_curves(case, "calibrated")
    assert calibrated_clean.n_skipped == 1
    assert calibrated_4.n_skipped == 1

    # The images with a value must give the drawn ECE on their own, so skipping changes nothing else.
    finite_images = [image for index, image in enumerate(case["images"]) if index != 1]
    expected = expected_calibration_error(
        [image["label"] for image in finite_images], [image["clean_probability"] for image in finite_images]
    )
    assert calibrated_clean.points is not None
    assert calibrated_clean.points.ece == pytest.approx(expected, abs=1e-12)

    paths = write_plots(make_report(case), tmp_path, "png")
    assert [path.name for path in paths] == [
        "reliability-elpv-mono-4shot-score.png",
        "entropy-elpv-mono-4shot-score.png",
        "auroc-vs-eps-elpv-mono.png",
    ]


def test_duplicate_slug_gets_suffix(tmp_path: Path) -> None:
    report = make_report(
        make_case(seed=0),
        make_case(seed=1),
        make_case(dataset="mvtec/bottle", eps_texts=("0",)),
        make_case(dataset="mvtec:bottle", eps_texts=("0",)),
        make_case(dataset="MVTEC:bottle", eps_texts=("0",)),
    )

    paths = write_plots(report, tmp_path, "png")

    names = [path.name for path in paths]
    assert len(set(names)) == len(names)
    assert "reliability-elpv-mono-4shot-score.png" in names
    assert "reliability-elpv-mono-4shot-score-2.png" in names
    assert "entropy-elpv-mono-4shot-score-2.png" in names
    assert "reliability-mvtec_bottle-4shot-score-2.png" in names
    assert "reliability-MVTEC_bottle-4shot-score-3.png" in names
    assert "auroc-vs-eps-MVTEC_bottle-3.png" in names
    assert len(list(tmp_path.iterdir())) == len(names)


def test_failed_save_leaves_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    report = make_report(make_case(eps_texts=("0",)))
    first = write_plots(report, tmp_path, "png")
    before = {path: path.read_bytes() for path in first}

    def fail_midway(self: Figure, handle: Any, **kwargs: Any) -> None:
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        write_plots(report, tmp_path, "png")

    assert sorted(tmp_path.iterdir()) == sorted(before)
    for path, content in before.items():
        assert path.read_bytes() == content, path.name


def test_reliability_points_hand_checked() -> None:
    # With 15 bins of width 1/15: 0.05 is in bin 0, 0.1 in bin 1, 0.5 in bin 7 and 0.95 in bin 14.
    labels = [0, 0, 1, 1, 1]
    probabilities = [0.05, 0.1, 0.1, 0.5, 0.95]

    points = reliability_points(labels, probabilities)

    np.testing.assert_allclose(points.mean_probability, [0.05, 0.1, 0.5, 0.95])
    np.testing.assert_allclose(points.fraction_positive, [0.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(points.counts, [1, 2, 1, 1])
    # (1 * 0.05 + 2 * 0.4 + 1 * 0.5 + 1 * 0.05) / 5
    assert points.ece == pytest.approx(0.28, abs=1e-12)


def test_reliability_points_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    probabilities = rng.uniform(size=200)
    labels = (rng.uniform(size=200) < probabilities).astype(int)

    points = reliability_points(labels, probabilities, n_bins=10)
    fraction_positive, mean_probability = calibration_curve(labels, probabilities, n_bins=10, strategy="uniform")

    np.testing.assert_allclose(points.mean_probability, mean_probability)
    np.testing.assert_allclose(points.fraction_positive, fraction_positive)
    assert points.ece == pytest.approx(expected_calibration_error(labels, probabilities, n_bins=10), abs=1e-12)


def test_raw_curve_uses_clean_range() -> None:
    case = make_case(eps_texts=("0", "4/255"), n_images=4)
    for image, clean, attacked in zip(case["images"], [0.0, 10.0, 5.0, 2.5], [20.0, -1.0, 7.5, 5.0]):
        image["clean_score"] = clean
        image["attacked"]["4/255"]["score"] = attacked
    labels = [image["label"] for image in case["images"]]

    clean_curve, attacked_curve = reliability_curves(case, "raw")

    # Clean scores span [0, 10], so attacked scores map by (score - 0) / 10, clipped to [0, 1].
    expected_clean = reliability_points(labels, [0.0, 1.0, 0.5, 0.25])
    expected_attacked = reliability_points(labels, [1.0, 0.0, 0.75, 0.5])
    assert clean_curve.points is not None
    assert attacked_curve.points is not None
    np.testing.assert_allclose(clean_curve.points.mean_probability, expected_clean.mean_probability)
    np.testing.assert_allclose(attacked_curve.points.mean_probability, expected_attacked.mean_probability)
    np.testing.assert_allclose(attacked_curve.points.fraction_positive, expected_attacked.fraction_positive)
    assert attacked_curve.eps == pytest.approx(4 / 255)


def test_invalid_scale_raises() -> None:
    with pytest.raises(AdrobustError, match="'logit'"):
        reliability_curves(make_case(), "logit")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda report: report.pop("cases"), r"missing the field 'cases'"),
        (lambda report: report["cases"][0].pop("shots"), r"report\['cases'\]\[0\] is missing the field 'shots'"),
        (
            lambda report: report["cases"][0]["images"][3].update(label=2),
            r"report\['cases'\]\[0\]\['images'\]\[3\]\['label'\].*received 2",
        ),
        (
            lambda report: report["cases"][0]["images"][1].update(clean_probability=1.5),
            r"\['clean_probability'\].*received 1.5",
        ),
        (lambda report: report["cases"][0]["budgets"][1].update(eps="4/255"), r"\['eps'\].*received '4/255'"),
    ],
)
def test_invalid_report_raises(tmp_path: Path, edit: Any, expected: str) -> None:
    report = make_report(make_case())
    edit(report)

    with pytest.raises(AdrobustError, match=expected):
        write_plots(report, tmp_path / "plots", "png")

    assert not (tmp_path / "plots").exists()
