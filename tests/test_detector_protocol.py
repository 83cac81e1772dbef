"""Own detectors: adapters for token modules, interface checks, and broken detectors caught early."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pytest_adrobust.data import load_dataset
from pytest_adrobust.detectors import AnomalyDINO, from_token_module, validate_detector
from pytest_adrobust.errors import AdrobustError
from pytest_adrobust.evaluation import CaseKey, evaluate_case
from pytest_adrobust.settings import parse_eps
from tests.helpers import random_images, tiny_detector, tiny_vit
from tests.synthetic import write_parts_dataset

BUDGETS = [parse_eps("0"), parse_eps("4/255")]


@pytest.fixture(scope="module")
def parts_split(tmp_path_factory: pytest.TempPathFactory):
    root = write_parts_dataset(tmp_path_factory.mktemp("data") / "parts", normal=8, per_defect=4)
    return load_dataset(f"folder:{root}")


def _evaluate(detector, split):
    key = CaseKey(split.spec, 2, 0, 4, "score", detector.fingerprint())
    return evaluate_case(detector, split, key, BUDGETS, batch_size=4)


def test_token_module_matches_vit_detector() -> None:
    vit = tiny_vit(seed=2)
    expected = AnomalyDINO.from_module(tiny_vit(seed=2), "tiny", resolution=56)
    adapted = from_token_module(vit, "tiny", patch_size=14, resolution=56, prefix_tokens=1,
                                forward=lambda module, images: module.forward_features(images))
    references, images = random_images(2, seed=0), random_images(3, seed=1)
    expected.fit(references)
    adapted.fit(references)
    assert torch.equal(adapted.score(images), expected.score(images))


class PatchConv(nn.Module):
    """A convolutional backbone whose stride-14 feature map plays the part of patch tokens."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 16, kernel_size=14, stride=14)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(images))


def test_feature_map_module_runs_protocol(parts_split) -> None:
    detector = from_token_module(PatchConv(), "patch-conv", patch_size=14, resolution=56)
    result = _evaluate(detector, parts_split)
    assert result.prepared.zero_gradient == []
    assert 0.0 <= result.budgets[BUDGETS[1]].auroc <= 1.0
    assert detector.describe() == {"backbone": "patch-conv", "weights": "user module"}


def test_token_module_bad_output_rejected() -> None:
    detector = from_token_module(nn.Flatten(), "flat", patch_size=14, resolution=56)
    with pytest.raises(AdrobustError, match=r"features of shape \(2, 9408\)"):
        detector.fit(random_images(2, seed=0))


class Incomplete:
    resolution = 56
    patch_size = 14
    device = torch.device("cpu")

    def fit(self, references: torch.Tensor) -> None:
        pass


def test_missing_methods_named() -> None:
    with pytest.raises(AdrobustError, match="lacks score_and_embed, score, fingerprint, describe"):
        validate_detector(Incomplete())


class Wrapped(nn.Module):
    """Delegates to the tiny detector; subclasses break one part of the contract."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_detector()
        self.head = nn.Dropout(0.5)
        self.resolution, self.patch_size, self.device = 56, 14, torch.device("cpu")
        self.eval()

    def fit(self, references: torch.Tensor) -> None:
        self.inner.fit(references)

    def score_and_embed(self, images: torch.Tensor):
        return self.inner.score_and_embed(images)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner.score(images)

    def fingerprint(self) -> str:
        return type(self).__name__

    def describe(self) -> dict[str, str]:
        return {"backbone": type(self).__name__, "weights": "test"}


def test_train_mode_detector_rejected(parts_split) -> None:
    detector = Wrapped()
    detector.head.train()
    with pytest.raises(AdrobustError, match=r"is in train mode \(head\); call .eval\(\)"):
        _evaluate(detector, parts_split)


class Detached(Wrapped):
    def score_and_embed(self, images: torch.Tensor):
        scores, embeddings = self.inner.score_and_embed(images)
        return scores.detach(), embeddings.detach()


def test_detached_scores_rejected(parts_split) -> None:
    with pytest.raises(AdrobustError, match="without a gradient path to the images"):
        _evaluate(Detached(), parts_split)


class NanScores(Wrapped):
    def score(self, images: torch.Tensor) -> torch.Tensor:
        return torch.full((images.shape[0],), float("nan"))


def test_nan_scores_rejected(parts_split) -> None:
    with pytest.raises(AdrobustError, match="non-finite scores"):
        _evaluate(NanScores(), parts_split)


class NanGradient(Wrapped):
    def score_and_embed(self, images: torch.Tensor):
        scores, embeddings = self.inner.score_and_embed(images)
        return scores + 0.0 * torch.sqrt(images - 2.0).sum(dim=(1, 2, 3)), embeddings


def test_nan_gradient_rejected(parts_split) -> None:
    with pytest.raises(AdrobustError, match="gradient is NaN or infinite"):
        _evaluate(NanGradient(), parts_split)


@pytest.mark.parametrize("layout", ["timm", "dinov2"])
def test_weights_file_reproduces_scores(tmp_path, layout: str) -> None:
    import timm

    name = "vit_small_patch14_dinov2"
    with torch.random.fork_rng():
        torch.manual_seed(7)
        source = timm.create_model(name, pretrained=False, num_classes=0, img_size=56, dynamic_img_size=True)
    state = {key: value.clone() for key, value in source.state_dict().items()}
    if layout == "dinov2":
        # The original release also stores the masked-image-modelling token, which timm drops.
        state["mask_token"] = torch.zeros(1, source.embed_dim)
    path = tmp_path / f"weights-{layout}.safetensors"
    save_file(state, str(path))

    expected = AnomalyDINO.from_module(source, name, resolution=56)
    loaded = AnomalyDINO(name, weights=str(path), resolution=56)
    references, images = random_images(2, seed=0), random_images(3, seed=1)
    expected.fit(references)
    loaded.fit(references)
    assert torch.equal(loaded.score(images), expected.score(images))
    assert loaded.describe()["weights"].startswith(f"file {path.resolve()} (sha256 ")


def test_custom_detector_example_runs(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "docs" / "examples" / "custom_detector"
    for source in example.iterdir():
        if source.is_file():
            (pytester.path / source.name).write_text(source.read_text())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["backbone partnet-v1 | weights random-init (seed 0) | device cpu | resolution 112"])


def test_cnn_backbone_name_rejected() -> None:
    with pytest.raises(AdrobustError, match="backbone 'resnet18' is not a vision transformer with patch tokens"):
        AnomalyDINO("resnet18", weights="random", resolution=56)
