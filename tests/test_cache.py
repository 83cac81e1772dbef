"""The score cache: sign packing, warm restores without model passes, keys and damaged entries."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pytest_adrobust.cache import ScoreCache, pack_signs, unpack_signs
from pytest_adrobust.data import load_dataset
from pytest_adrobust.evaluation import CaseKey, attacked_scores, ensure_inputs, evaluate_case
from pytest_adrobust.settings import parse_eps
from tests.helpers import tiny_detector
from tests.synthetic import write_parts_dataset

BUDGETS = [parse_eps("0"), parse_eps("4/255"), parse_eps("8/255")]


@given(arrays(np.int8, st.tuples(st.integers(1, 5), st.integers(1, 7)), elements=st.sampled_from([-1, 0, 1])))
def test_sign_packing_round_trips(signs: np.ndarray) -> None:
    packed = pack_signs(signs)
    assert packed.size == -(-signs.size // 4)
    assert np.array_equal(unpack_signs(packed, signs.shape), signs)


@pytest.fixture(scope="module")
def parts_split(tmp_path_factory: pytest.TempPathFactory):
    root = write_parts_dataset(tmp_path_factory.mktemp("data") / "parts")
    return load_dataset(f"folder:{root}")


class Untouchable(torch.nn.Module):
    """A detector with the tiny detector's fingerprint that fails if the protocol runs it."""

    def __init__(self, fingerprint: str) -> None:
        super().__init__()
        self._fingerprint = fingerprint
        self.resolution, self.patch_size, self.device = 56, 14, torch.device("cpu")
        self.eval()

    def fit(self, references: torch.Tensor) -> None:
        raise AssertionError("fit() ran on a cache hit")

    def score_and_embed(self, images: torch.Tensor):
        raise AssertionError("score_and_embed() ran on a cache hit")

    def score(self, images: torch.Tensor) -> torch.Tensor:
        raise AssertionError("score() ran on a cache hit")

    def fingerprint(self) -> str:
        return self._fingerprint

    def describe(self) -> dict[str, str]:
        return {"backbone": "untouchable", "weights": "none"}


def test_warm_run_needs_no_model(parts_split, tmp_path) -> None:
    detector = tiny_detector()
    cache = ScoreCache(tmp_path)
    key = CaseKey(parts_split.spec, 2, 0, 6, "score", detector.fingerprint())
    cold = evaluate_case(detector, parts_split, key, BUDGETS, batch_size=4, cache=cache)
    warm = evaluate_case(Untouchable(detector.fingerprint()), parts_split, key, BUDGETS, batch_size=4, cache=cache)

    assert cold.prepared.cache == "stored"
    assert warm.prepared.cache == "hit"
    assert warm.prepared.passes == {"reference_forward": 0, "forward_backward": 0, "forward": 0}
    for eps in BUDGETS:
        assert warm.budgets[eps].scalars() == cold.budgets[eps].scalars()
    assert warm.noise_control == cold.noise_control
    assert warm.warnings == cold.warnings
    assert torch.equal(warm.prepared.gradient_sign, cold.prepared.gradient_sign)


def test_new_weights_miss_the_cache(parts_split, tmp_path) -> None:
    cache = ScoreCache(tmp_path)
    first = tiny_detector(seed=0)
    second = tiny_detector(seed=1)
    evaluate_case(first, parts_split, CaseKey(parts_split.spec, 2, 0, 6, "score", first.fingerprint()), BUDGETS, 4, cache=cache)
    other = evaluate_case(second, parts_split, CaseKey(parts_split.spec, 2, 0, 6, "score", second.fingerprint()), BUDGETS, 4, cache=cache)
    assert other.prepared.cache == "stored"
    assert other.prepared.passes["forward_backward"] == len(other.prepared.test)


def test_missing_budget_recomputes_case(parts_split, tmp_path) -> None:
    detector = tiny_detector()
    cache = ScoreCache(tmp_path)
    key = CaseKey(parts_split.spec, 2, 0, 6, "score", detector.fingerprint())
    evaluate_case(detector, parts_split, key, BUDGETS[:2], batch_size=4, cache=cache)
    wider = evaluate_case(detector, parts_split, key, BUDGETS, batch_size=4, cache=cache)
    assert wider.prepared.cache == "stored"
    assert wider.prepared.passes["forward_backward"] == len(wider.prepared.test)


def test_damaged_entry_is_recomputed(parts_split, tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    detector = tiny_detector()
    cache = ScoreCache(tmp_path)
    key = CaseKey(parts_split.spec, 2, 0, 6, "score", detector.fingerprint())
    cold = evaluate_case(detector, parts_split, key, BUDGETS, batch_size=4, cache=cache)
    (entry,) = tmp_path.rglob("*.npz")
    entry.write_bytes(b"not a zip file")

    with caplog.at_level(logging.WARNING, logger="pytest_adrobust"):
        again = evaluate_case(detector, parts_split, key, BUDGETS, batch_size=4, cache=cache)
    assert again.prepared.cache == "stored"
    assert "ignoring unreadable cache entry" in caplog.text
    assert again.budgets[BUDGETS[-1]].scalars() == cold.budgets[BUDGETS[-1]].scalars()


def test_restored_case_scores_new_budget(parts_split, tmp_path) -> None:
    detector = tiny_detector()
    cache = ScoreCache(tmp_path)
    key = CaseKey(parts_split.spec, 2, 0, 6, "score", detector.fingerprint())
    budget = parse_eps("2/255")
    cold = evaluate_case(detector, parts_split, key, [*BUDGETS, budget], batch_size=4)
    evaluate_case(detector, parts_split, key, BUDGETS, batch_size=4, cache=cache)
    warm = evaluate_case(detector, parts_split, key, BUDGETS, batch_size=4, cache=cache)
    assert warm.prepared.images is None

    # Fit the detector on other references first, as another case would, to check the refit.
    detector.fit(torch.rand(1, 3, 56, 56))
    ensure_inputs(detector, warm.prepared)
    scores = attacked_scores(detector, warm.prepared, budget, batch_size=4)
    assert np.allclose(scores, cold.budgets[budget].attacked_scores, atol=1e-6)


def test_image_files_hashed_once(parts_split, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pytest_adrobust.evaluation as evaluation_module

    calls = []
    original = evaluation_module.records_fingerprint

    def counting(records):
        calls.append(len(records))
        return original(records)

    monkeypatch.setattr(evaluation_module, "records_fingerprint", counting)
    detector = tiny_detector()
    key = CaseKey(parts_split.spec, 2, 0, 6, "score", detector.fingerprint())
    evaluate_case(detector, parts_split, key, BUDGETS, batch_size=4, cache=ScoreCache(tmp_path))
    assert len(calls) == 1
