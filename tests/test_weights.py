"""Tests for loading backbone weights from files, the Hugging Face cache or a seeded random init."""

from __future__ import annotations

import hashlib
import time
import warnings
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from pytest_adrobust.detectors import DEFAULT_BACKBONE
from pytest_adrobust.detectors.weights import (
    RANDOM_INIT,
    WeightsInfo,
    find_cached_weights,
    load_weights_file,
    read_state_dict,
    resolve_weights,
    validate_weights,
)
from pytest_adrobust.errors import AdrobustError, AdrobustWarning
from tests.helpers import random_images, tiny_vit

HUB_REPO_FOLDER = "models--timm--vit_small_patch14_dinov2.lvd142m"
SNAPSHOT_HASH = "0123456789abcdef0123456789abcdef01234567"


def features_of(model: nn.Module) -> torch.Tensor:
    """Return ``forward_features`` of two fixed random 56-pixel images, without gradients."""
    with torch.no_grad():
        return model.forward_features(random_images(2, seed=42))


def small_default_backbone(seed: int) -> nn.Module:
    """Create a one-block ViT-S/14 through timm, so it carries the default backbone's pretrained config."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(
            DEFAULT_BACKBONE, pretrained=False, num_classes=0, img_size=56, dynamic_img_size=True, depth=1
        )
    return model.eval()


def cloned_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return a copy of the model's state dict whose tensors share no storage with the model."""
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the Hugging Face cache at an empty folder and return the hub cache folder."""
    home = tmp_path / "hf"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    # huggingface_hub reads the environment once at import, so the module constant needs patching too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def write_hub_snapshot(cache: Path, state: dict[str, torch.Tensor]) -> Path:
    """Lay out ``model.safetensors`` in ``cache`` the way huggingface_hub stores a downloaded snapshot."""
    repo = cache / HUB_REPO_FOLDER
    snapshot = repo / "snapshots" / SNAPSHOT_HASH
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SNAPSHOT_HASH)
    path = snapshot / "model.safetensors"
    save_file(state, str(path))
    return path


# Files in timm's layout


def test_safetensors_file_reproduces_outputs(tmp_path: Path) -> None:
    source = tiny_vit(seed=1)
    target = tiny_vit(seed=2)
    path = tmp_path / "tiny.safetensors"
    save_file(cloned_state(source), str(path))
    assert not torch.equal(features_of(source), features_of(target))

    load_weights_file(target, "tiny-vit", path)

    assert torch.equal(features_of(source), features_of(target))


def test_pth_file_reproduces_outputs(tmp_path: Path) -> None:
    source = tiny_vit(seed=1, num_reg_tokens=4)
    target = tiny_vit(seed=2, num_reg_tokens=4)
    path = tmp_path / "tiny.pth"
    torch.save(source.state_dict(), path)

    load_weights_file(target, "tiny-vit", path)

    assert torch.equal(features_of(source), features_of(target))


@pytest.mark.parametrize("wrapper", ["model", "teacher", "state_dict"])
def test_wrapped_backbone_prefix_loads(tmp_path: Path, wrapper: str) -> None:
    source = tiny_vit(seed=1)
    target = tiny_vit(seed=2)
    path = tmp_path / "checkpoint.pth"
    torch.save({wrapper: {f"backbone.{key}": value for key, value in source.state_dict().items()}}, path)

    load_weights_file(target, "tiny-vit", path)

    assert torch.equal(features_of(source), features_of(target))


def test_module_prefix_is_stripped(tmp_path: Path) -> None:
    state = tiny_vit(seed=1).state_dict()
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{key}": value for key, value in state.items()}, path)

    loaded = read_state_dict(path)

    assert sorted(loaded) == sorted(state)


def test_teacher_checkpoint_with_heads_loads(tmp_path: Path) -> None:
    source = tiny_vit(seed=1)
    target = tiny_vit(seed=2)
    teacher = {f"backbone.{key}": value for key, value in source.state_dict().items()}
    teacher["dino_head.mlp.0.weight"] = torch.zeros(8, 32)
    teacher["ibot_head.mlp.0.weight"] = torch.zeros(8, 32)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": teacher}, path)

    load_weights_file(target, "tiny-vit", path)

    assert torch.equal(features_of(source), features_of(target))


# Files in the original DINOv2 layout


def test_dinov2_layout_loads(tmp_path: Path) -> None:
    source = tiny_vit(seed=1)
    target = tiny_vit(seed=2)

    # The original release keeps timm's names for a ViT without registers and adds the
    # masked-image-modelling token, which inference does not use.
    original = cloned_state(source)
    original["mask_token"] = torch.zeros(1, 32)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(original, path)

    load_weights_file(target, "tiny-vit", path)

    assert torch.equal(features_of(source), features_of(target))


def test_dinov2_register_layout_loads(tmp_path: Path) -> None:
    source = tiny_vit(seed=1, num_reg_tokens=4)
    target = tiny_vit(seed=2, num_reg_tokens=4)
    generator = torch.Generator().manual_seed(7)
    class_position = torch.randn(1, 1, 32, generator=generator)
    class_token = torch.randn(1, 1, 32, generator=generator)

    # The original release names the registers register_tokens and keeps the class token's
    # position embedding as the first row of pos_embed, which timm folds into cls_token.
    original = cloned_state(source)
    original["register_tokens"] = original.pop("reg_token")
    original["cls_token"] = class_token
    original["pos_embed"] = torch.cat([class_position, original["pos_embed"]], dim=1)
    original["mask_token"] = torch.zeros(1, 32)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(original, path)
    with torch.no_grad():
        source.cls_token.copy_(class_token + class_position[:, 0])

    load_weights_file(target, "tiny-vit", path)

    assert torch.equal(target.reg_token, source.reg_token)
    assert torch.equal(features_of(source), features_of(target))


# Files that do not fit


def test_embed_dim_mismatch_rejected(tmp_path: Path) -> None:
    path = tmp_path / "wide.safetensors"
    save_file(cloned_state(tiny_vit(seed=1, embed_dim=48)), str(path))

    with pytest.raises(AdrobustError, match="does not match backbone 'tiny-vit'") as caught:
        load_weights_file(tiny_vit(seed=2), "tiny-vit", path)

    message = str(caught.value)
    assert repr(str(path)) in message
    assert "file (48,) vs model (32,)" in message
    assert "--adrobust-backbone" in message


def test_missing_key_rejected(tmp_path: Path) -> None:
    state = cloned_state(tiny_vit(seed=1))
    del state["norm.weight"]
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))

    with pytest.raises(AdrobustError, match=r"1 missing key \(e\.g\. norm\.weight\)\. The file looks incomplete"):
        load_weights_file(tiny_vit(seed=2), "tiny-vit", path)


def test_unexpected_key_rejected(tmp_path: Path) -> None:
    state = cloned_state(tiny_vit(seed=1))
    state["adapter.weight"] = torch.zeros(3)
    path = tmp_path / "extra.safetensors"
    save_file(state, str(path))

    with pytest.raises(AdrobustError, match=r"1 unexpected key \(e\.g\. adapter\.weight\)\. The file looks incomplete"):
        load_weights_file(tiny_vit(seed=2), "tiny-vit", path)


@pytest.mark.parametrize("name", ["garbage.safetensors", "garbage.pth"])
def test_garbage_file_rejected(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not a weights file")

    with pytest.raises(AdrobustError, match="failed to read weights file") as caught:
        load_weights_file(tiny_vit(), "tiny-vit", path)

    assert repr(str(path)) in str(caught.value)


def test_non_tensor_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "numbers.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)

    with pytest.raises(AdrobustError, match="does not contain a state dict of tensors"):
        read_state_dict(path)


# validate_weights


@pytest.mark.parametrize("mode", ["auto", "pretrained", "random"])
def test_weights_modes_accepted(mode: str) -> None:
    assert validate_weights(mode) == mode


@pytest.mark.parametrize("name", ["w.safetensors", "w.pth", "w.pt", "w.bin", "w.PTH"])
def test_existing_weights_file_accepted(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")

    assert validate_weights(str(path)) == str(path)


@pytest.mark.parametrize("value", ["weights.txt", "pretrained-ish", "model.onnx"])
def test_bad_weights_suffix_rejected(value: str) -> None:
    with pytest.raises(AdrobustError, match=f"invalid weights {value!r}") as caught:
        validate_weights(value)

    message = str(caught.value)
    assert "auto, pretrained, random" in message
    assert ".safetensors" in message


def test_missing_weights_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "absent.safetensors"

    with pytest.raises(AdrobustError, match="weights file not found") as caught:
        validate_weights(str(path))

    assert repr(str(path)) in str(caught.value)


# resolve_weights and the Hugging Face cache


def test_random_mode_keeps_init() -> None:
    model = tiny_vit(seed=5)
    before = cloned_state(model)

    info = resolve_weights(model, "tiny-vit", "random", seed=5)

    assert info == WeightsInfo(RANDOM_INIT, None, None, 5)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_auto_empty_cache_warns(hub_cache: Path) -> None:
    model = small_default_backbone(seed=0)

    with pytest.warns(AdrobustWarning, match="no pretrained weights .* seeded random initialisation"):
        info = resolve_weights(model, DEFAULT_BACKBONE, "auto", seed=3)

    assert info == WeightsInfo(RANDOM_INIT, None, None, 3)


def test_pretrained_offline_fails_fast(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = small_default_backbone(seed=0)
    started = time.monotonic()

    with pytest.raises(AdrobustError, match="not in the local cache and HF_HUB_OFFLINE is set") as caught:
        resolve_weights(model, DEFAULT_BACKBONE, "pretrained", seed=0)

    # A bound on waiting for the network, not a speed target.
    assert time.monotonic() - started < 5.0
    message = str(caught.value)
    assert "--adrobust-weights PATH" in message
    assert "timm/vit_small_patch14_dinov2.lvd142m" in message


def test_pretrained_without_hub_id_rejected(hub_cache: Path) -> None:
    with pytest.raises(AdrobustError, match="has no pretrained weights on the Hugging Face hub"):
        resolve_weights(tiny_vit(), "tiny-vit", "pretrained", seed=0)


def test_find_cached_weights_empty(hub_cache: Path) -> None:
    assert find_cached_weights(small_default_backbone(seed=0)) is None


def test_find_cached_weights_snapshot(hub_cache: Path) -> None:
    model = small_default_backbone(seed=0)
    path = write_hub_snapshot(hub_cache, cloned_state(model))

    assert find_cached_weights(model) == path


def test_auto_loads_cached_weights(hub_cache: Path) -> None:
    source = small_default_backbone(seed=1)
    target = small_default_backbone(seed=2)
    path = write_hub_snapshot(hub_cache, cloned_state(source))

    with warnings.catch_warnings():
        warnings.simplefilter("error", AdrobustWarning)
        info = resolve_weights(target, DEFAULT_BACKBONE, "auto", seed=2)

    assert info == WeightsInfo("pretrained", str(path), hashlib.sha256(path.read_bytes()).hexdigest(), None)
    assert torch.equal(features_of(source), features_of(target))


def test_weights_file_path_resolved(tmp_path: Path) -> None:
    source = tiny_vit(seed=1)
    target = tiny_vit(seed=2)
    path = tmp_path / "tiny.safetensors"
    save_file(cloned_state(source), str(path))

    info = resolve_weights(target, "tiny-vit", str(path), seed=2)

    assert info == WeightsInfo("file", str(path.resolve()), hashlib.sha256(path.read_bytes()).hexdigest(), None)
    assert torch.equal(features_of(source), features_of(target))


# WeightsInfo.describe


def test_describe_random_init() -> None:
    assert WeightsInfo(RANDOM_INIT, None, None, 7).describe() == "random-init (seed 7)"


@pytest.mark.parametrize("source", ["pretrained", "file"])
def test_describe_loaded_weights(source: str) -> None:
    digest = "ab" * 32
    info = WeightsInfo(source, "/models/vits14.safetensors", digest, None)

    assert info.describe() == f"{source} /models/vits14.safetensors (sha256 abababababab)"


def test_describe_without_file() -> None:
    assert WeightsInfo("user module", None, None, None).describe() == "user module"
