"""Plugin behaviour through pytester: ids, outcomes, messages, summary, report and bad options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pytest_adrobust.metrics import expected_calibration_error
from tests.synthetic import TINY_DETECTOR_CONFTEST, write_parts_dataset

pytest_plugins = ["pytester"]


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Return a pytester directory with a generated dataset, the tiny detector and fast settings."""
    write_parts_dataset(pytester.path / "parts")
    pytester.makeconftest(TINY_DETECTOR_CONFTEST)
    pytester.makeini(
        """
        [pytest]
        adrobust_datasets = folder:parts
        adrobust_eps = 0, 4/255, 8/255
        adrobust_shots = 2
        adrobust_max_images = 6
        adrobust_device = cpu
        """
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # A subprocess keeps each run's torch state and plugin registration apart.
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", *args)


def test_ids_name_dataset_shots_and_eps(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        def test_robust(adrobust_case):
            assert adrobust_case.auroc >= 0
        """
    )
    result = run(suite, "--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            "test_ids_name_dataset_shots_and_eps.py::test_robust[[]folder-parts-2shot-eps0[]]",
            "test_ids_name_dataset_shots_and_eps.py::test_robust[[]folder-parts-2shot-eps4/255[]]",
            "test_ids_name_dataset_shots_and_eps.py::test_robust[[]folder-parts-2shot-eps8/255[]]",
        ]
    )
    assert result.ret == 0


def test_failing_threshold_fails_only_its_items(suite: pytest.Pytester, tmp_path: Path) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.adrobust(max_auroc_drop=0.0)
        def test_strict(adrobust_case):
            adrobust_case.check()

        @pytest.mark.adrobust(max_auroc_drop=1.0)
        def test_lenient(adrobust_case):
            adrobust_case.check()
        """
    )
    report_path = tmp_path / "report.json"
    result = run(suite, f"--adrobust-report={report_path}")
    report = json.loads(report_path.read_text())

    # The drop at eps 0 is exactly 0; every nonzero budget that lowers AUROC must fail.
    drops = {budget["eps_text"]: budget["auroc_drop"] for budget in report["cases"][0]["budgets"]}
    expected_failures = sorted(eps for eps, drop in drops.items() if drop > 0.0)
    assert expected_failures, f"the tiny model should lose AUROC under attack, drops: {drops}"

    outcomes = {item["nodeid"].split("::")[1]: item["outcome"] for item in report["items"]}
    failed = sorted(name for name, outcome in outcomes.items() if outcome == "failed")
    assert failed == [f"test_strict[folder-parts-2shot-eps{eps}]" for eps in expected_failures]
    assert all(outcome == "passed" for name, outcome in outcomes.items() if name.startswith("test_lenient"))
    result.assert_outcomes(passed=6 - len(expected_failures), failed=len(expected_failures))


def test_failure_message_names_metric_value_limit(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.adrobust(eps=["8/255"], min_entropy_gap=1.0, max_ece=0.0)
        def test_gap(adrobust_case):
            adrobust_case.check()
        """
    )
    result = run(suite)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*calibrated ECE * exceeds max_ece 0 on folder-parts, 2-shot, eps 8/255*",
            "*entropy gap * bits is below min_entropy_gap 1 on folder-parts, 2-shot, eps 8/255*",
        ]
    )


def test_check_without_threshold_is_error(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.adrobust(eps=[0])
        def test_nothing(adrobust_case):
            adrobust_case.check()
        """
    )
    result = run(suite)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*has no threshold to assert*"])


def test_summary_has_header_and_row_per_eps(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        def test_robust(adrobust_case):
            assert adrobust_case.auroc >= 0
        """
    )
    result = run(suite)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*adrobust summary*",
            "backbone tiny-vit | weights random-init (seed 0) | device cpu | resolution 56",
            "shots 2 | seed 0 | attack score | time * s | started *",
            "*weights are a seeded random initialisation*",
            "folder-parts 2-shot, attack score, 12 images (6 normal, 6 anomalous), clean AUROC *",
        ]
    )
    rows = [line for line in result.outlines if line.startswith(("|0 ", "|4/255", "|8/255"))]
    assert len(rows) == 3, result.stdout.str()
    # Outside a terminal the table is plain ASCII, without colour codes.
    assert "\x1b[" not in result.stdout.str()


def test_report_recomputes_metrics(suite: pytest.Pytester, tmp_path: Path) -> None:
    suite.makepyfile(
        """
        def test_robust(adrobust_case):
            assert adrobust_case.auroc >= 0
        """
    )
    report_path = tmp_path / "report.json"
    result = run(suite, f"--adrobust-report={report_path}")
    result.assert_outcomes(passed=3)
    report = json.loads(report_path.read_text())

    assert report["schema"] == "pytest-adrobust-report"
    assert report["detectors"][report["cases"][0]["detector"]]["weights"] == "random-init (seed 0)"
    case = report["cases"][0]
    labels = np.array([image["label"] for image in case["images"]])
    for budget in case["budgets"]:
        scores = np.array([image["attacked"][budget["eps_text"]]["score"] for image in case["images"]])
        probabilities = np.array([image["attacked"][budget["eps_text"]]["probability"] for image in case["images"]])
        assert budget["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert budget["ece"] == pytest.approx(expected_calibration_error(labels, probabilities), abs=1e-12)

    # Platt parameters in the report reproduce the calibrated probabilities of each fold.
    for image in case["images"]:
        calibration = case["calibration"][image["fold"]]
        logit = calibration["platt_slope"] * image["clean_score"] + calibration["platt_intercept"]
        assert image["clean_probability"] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-9)


def test_clean_pass_shared_across_items(suite: pytest.Pytester, tmp_path: Path) -> None:
    suite.makepyfile(
        """
        def test_one(adrobust_case):
            assert adrobust_case.auroc >= 0

        def test_two(adrobust_case):
            assert adrobust_case.auroc >= 0
        """
    )
    report_path = tmp_path / "report.json"
    result = run(suite, f"--adrobust-report={report_path}")
    result.assert_outcomes(passed=6)
    report = json.loads(report_path.read_text())
    assert len(report["cases"]) == 1
    passes = report["cases"][0]["passes"]
    images = report["cases"][0]["n_images"]
    assert passes["forward_backward"] == images
    assert passes["reference_forward"] == 2


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--adrobust-eps=2", "*--adrobust-eps: invalid eps '2'*"),
        ("--adrobust-eps=4/0", "*invalid eps '4/0'*"),
        ("--adrobust-attack=pgd", "*--adrobust-attack: invalid attack 'pgd': use one of score, surrogate*"),
        ("--adrobust-datasets=imagenet:cats", "*--adrobust-datasets: *unknown kind 'imagenet'*"),
        ("--adrobust-max-images=1", "*invalid max_images '1'*"),
        ("--adrobust-device=tpu", "*invalid device 'tpu'*"),
    ],
)
def test_bad_option_is_usage_error(suite: pytest.Pytester, option: str, message: str) -> None:
    suite.makepyfile("def test_nothing():\n    pass\n")
    result = run(suite, option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


def test_bad_ini_value_names_key(suite: pytest.Pytester) -> None:
    suite.makeini("[pytest]\nadrobust_shots = three\n")
    suite.makepyfile("def test_nothing():\n    pass\n")
    result = run(suite)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini key adrobust_shots: invalid shots 'three'*"])


def test_marker_beats_command_line(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.adrobust(eps=["2/255"])
        def test_marked(adrobust_case):
            pass

        def test_unmarked(adrobust_case):
            pass
        """
    )
    result = run(suite, "--collect-only", "-q", "--adrobust-eps=1/255")
    result.stdout.fnmatch_lines(["*test_marked[[]folder-parts-2shot-eps2/255[]]", "*test_unmarked[[]folder-parts-2shot-eps1/255[]]"])
    assert "eps4/255" not in result.stdout.str()


def test_marker_rejects_session_keyword(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.adrobust(backbone="vit_large_patch14_dinov2")
        def test_marked(adrobust_case):
            pass
        """
    )
    result = run(suite)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*'backbone' applies to the whole session*--adrobust-backbone*"])


def test_missing_folder_is_collection_error(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.adrobust(datasets=["folder:does-not-exist"])
        def test_marked(adrobust_case):
            pass
        """
    )
    result = run(suite)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*does-not-exist*"])


def test_too_many_shots_is_collection_error(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.adrobust(shots=[500])
        def test_marked(adrobust_case):
            pass
        """
    )
    result = run(suite)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*shots*500*"])


def test_surrogate_attack_runs(suite: pytest.Pytester, tmp_path: Path) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.adrobust(attack="surrogate", eps=[0, "8/255"])
        def test_robust(adrobust_case):
            assert adrobust_case.attack == "surrogate"
        """
    )
    report_path = tmp_path / "report.json"
    result = run(suite, f"--adrobust-report={report_path}")
    result.assert_outcomes(passed=2)
    case = json.loads(report_path.read_text())["cases"][0]
    assert case["attack"] == "surrogate"
    # The head for the second fold needs the first fold's features before any backward pass.
    first_fold = sum(1 for image in case["images"] if image["fold"] == 0)
    assert case["passes"]["forward"] == first_fold + case["n_images"] * 2 + min(case["n_images"], 4)


def test_second_run_restores_from_cache(suite: pytest.Pytester, tmp_path: Path) -> None:
    suite.makepyfile(
        """
        def test_robust(adrobust_case):
            assert adrobust_case.auroc >= 0
        """
    )
    cache = tmp_path / "scores"
    reports = []
    for run_index in range(2):
        report_path = tmp_path / f"report-{run_index}.json"
        result = run(suite, f"--adrobust-cache={cache}", f"--adrobust-report={report_path}")
        result.assert_outcomes(passed=3)
        reports.append(json.loads(report_path.read_text())["cases"][0])

    assert reports[0]["cache"] == "stored"
    assert reports[1]["cache"] == "hit"
    assert reports[1]["passes"] == {"reference_forward": 0, "forward_backward": 0, "forward": 0}
    assert reports[1]["budgets"] == reports[0]["budgets"]
    assert reports[1]["images"] == reports[0]["images"]


def test_cache_off_writes_nothing(suite: pytest.Pytester, tmp_path: Path) -> None:
    suite.makepyfile(
        """
        def test_robust(adrobust_case):
            assert adrobust_case.auroc >= 0
        """
    )
    report_path = tmp_path / "report.json"
    result = suite.runpytest_subprocess("--adrobust-cache=off", f"--adrobust-report={report_path}")
    result.assert_outcomes(passed=3)
    assert json.loads(report_path.read_text())["cases"][0]["cache"] == "off"
    assert not list(suite.path.rglob("*.npz"))


def test_max_images_all_beats_ini(suite: pytest.Pytester, tmp_path: Path) -> None:
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.adrobust(eps=[0])
        def test_robust(adrobust_case):
            assert adrobust_case.auroc >= 0
        """
    )
    report_path = tmp_path / "report.json"
    result = run(suite, "--adrobust-max-images=all", f"--adrobust-report={report_path}")
    result.assert_outcomes(passed=1)
    case = json.loads(report_path.read_text())["cases"][0]
    # The generated pool has 6 normal and 12 anomalous test images, and the ini's limit is 6.
    assert case["max_images"] is None
    assert case["n_images"] == 18


def test_ini_folder_relative_to_ini_file(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = suite.mkdir("sub")
    (sub / "test_robust.py").write_text("def test_robust(adrobust_case):\n    pass\n")
    # Run from the subdirectory: the ini's folder:parts must still mean the folder beside the ini file.
    monkeypatch.chdir(sub)
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "--collect-only", "-q", "--adrobust-eps=0")
    result.stdout.fnmatch_lines(["*test_robust[[]folder-parts-2shot-eps0[]]"])
    assert result.ret == 0


def test_same_folder_names_get_distinct_ids(suite: pytest.Pytester) -> None:
    write_parts_dataset(suite.path / "v2" / "parts", normal=8, per_defect=4)
    suite.makepyfile(
        """
        def test_robust(adrobust_case):
            pass
        """
    )
    result = run(suite, "--collect-only", "-q", "--adrobust-eps=0", "--adrobust-datasets=folder:parts,folder:v2/parts/")
    result.stdout.fnmatch_lines(["*test_robust[[]folder-parts-2shot-eps0[]]", "*test_robust[[]folder-parts-??????-2shot-eps0[]]"])


def test_mvtec_all_expands_categories(suite: pytest.Pytester, tmp_path: Path) -> None:
    from tests.synthetic import write_mvtec_tree

    write_mvtec_tree(suite.path / "mvtec")
    suite.makepyfile(
        """
        import pytest

        @pytest.mark.adrobust(datasets=["mvtec:all@mvtec"], eps=[0, "4/255"], shots=[1], max_images=2)
        def test_robust(adrobust_case):
            assert adrobust_case.auroc >= 0
        """
    )
    report_path = tmp_path / "report.json"
    result = run(suite, f"--adrobust-report={report_path}")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*mvtec-bottle 1-shot*, rotation", "*mvtec-capsule 1-shot*, rotation"])
    cases = {case["dataset"]: case for case in json.loads(report_path.read_text())["cases"]}
    # Capsule is masked under auto, except with random weights, whose tokens miss the mask threshold.
    assert cases["mvtec-capsule"]["masking"] is False
    assert cases["mvtec-bottle"]["masking"] is False
    assert cases["mvtec-bottle"]["rotation"] is True
    assert cases["mvtec-bottle"]["dataset_layout"] == "mvtec tree"
