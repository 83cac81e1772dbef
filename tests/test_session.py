"""Per-case preprocessing choices, detector configuration and device resolution."""

from __future__ import annotations

import pytest
import torch

from pytest_adrobust.data import DatasetSplit
from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.session import case_preprocessing, configure_detector, resolve_device
from pytest_adrobust.settings import CaseSettings, Thresholds, parse_eps


def _settings(masking: str = "auto", rotation: str = "auto") -> CaseSettings:
    return CaseSettings(("x",), (parse_eps("0"),), (1,), "score", 0, 4, Thresholds(), "random", masking, rotation)


def _split(name: str) -> DatasetSplit:
    # Turn a display name such as "mvtec-capsule" into the spec the loaders would have read.
    kind, _, category = name.partition("-")
    spec = {"mvtec": f"mvtec:{category}@/data", "visa": f"visa:{category}@/data", "elpv": f"elpv:{category}"}.get(
        kind, f"folder:/data/{category}"
    )
    # A suffix like the one that tells same-named folders apart must not change the choice.
    return DatasetSplit(name=f"{name}-1a2b3c", spec=spec, train=(), test=(), layout="test")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mvtec-capsule", (True, True)),
        ("mvtec-screw", (True, True)),
        ("mvtec-bottle", (False, True)),
        ("visa-pcb1", (True, True)),
        ("elpv-mono", (False, False)),
        ("folder-parts", (False, False)),
    ],
)
def test_auto_preprocessing_per_category(name: str, expected: tuple[bool, bool]) -> None:
    assert case_preprocessing(_split(name), _settings()) == expected


def test_explicit_preprocessing_wins() -> None:
    assert case_preprocessing(_split("mvtec-capsule"), _settings("off", "off")) == (False, False)
    assert case_preprocessing(_split("elpv-mono"), _settings("on", "on")) == (True, True)


class Plain:
    """A detector without preprocessing options."""


class Configurable:
    masking = False
    rotation = False


def test_configure_sets_attributes() -> None:
    detector = Configurable()
    configure_detector(detector, True, False)  # type: ignore[arg-type]
    assert detector.masking is True
    assert detector.rotation is False


def test_configure_rejects_unsupported_option() -> None:
    configure_detector(Plain(), False, False)  # type: ignore[arg-type]
    with pytest.raises(AdrobustError, match="masking is on for this case but detector Plain has no 'masking'"):
        configure_detector(Plain(), True, False)  # type: ignore[arg-type]


def test_cuda_request_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(AdrobustError, match="device 'cuda' requested but CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    ("free", "per_image", "expected"),
    [(8_000, 1_000, 4), (1_000, 1_000, 1), (10**12, 1_000, 64), (0, 1_000, 1), (1_000, 0, 64)],
)
def test_batch_size_for_memory(free: int, per_image: int, expected: int) -> None:
    from pytest_adrobust.session import batch_size_for_memory

    assert batch_size_for_memory(free, per_image) == expected


def test_auto_batch_size_on_cpu() -> None:
    from pytest_adrobust.session import choose_batch_size
    from tests.helpers import tiny_detector

    assert choose_batch_size("auto", tiny_detector()) == 8
    assert choose_batch_size(3, tiny_detector()) == 3


def test_auto_masking_off_for_random_weights() -> None:
    assert case_preprocessing(_split("mvtec-capsule"), _settings(), random_init=True) == (False, True)
    assert case_preprocessing(_split("mvtec-capsule"), _settings("on"), random_init=True) == (True, True)
