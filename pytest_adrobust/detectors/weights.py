"""Weight resolution for DINOv2 backbones: local files, the Hugging Face cache, or a seeded random init.

Nothing here downloads unless ``weights="pretrained"`` is requested, the file is not cached, and
``HF_HUB_OFFLINE`` is unset. The hub is probed once with a short timeout first, so an unreachable
hub fails fast instead of spending a minute in retries.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Final, final

import torch
from torch import nn

from pytest_adrobust.errors import AdrobustError, AdrobustWarning

logger = logging.getLogger("pytest_adrobust")

WEIGHTS_MODES: Final = ("auto", "pretrained", "random")
RANDOM_INIT: Final = "random-init"
WEIGHTS_FILE_SUFFIXES: Final = (".safetensors", ".pth", ".pt", ".bin")
_HUB_FILENAMES: Final = ("model.safetensors", "pytorch_model.bin")


@final
@dataclass(frozen=True)
class WeightsInfo:
    """Provenance of the weights a backbone runs with, shown in every summary and report."""

    source: str
    """``random-init``, ``pretrained``, ``file``, or a caller's own description for a wrapped module."""
    path: str | None
    """File the weights came from, ``None`` for a random initialisation."""
    sha256: str | None
    """Hash of the weights file, ``None`` for a random initialisation."""
    seed: int | None
    """Seed of the random initialisation, ``None`` for loaded weights."""

    def describe(self) -> str:
        """Return a one-line description such as ``random-init (seed 0)``."""
        if self.source == RANDOM_INIT:
            return f"{RANDOM_INIT} (seed {self.seed})"
        if self.sha256 is None:
            return self.source
        return f"{self.source} {self.path} (sha256 {self.sha256[:12]})"


def validate_weights(value: str) -> str:
    """Check a ``weights`` setting and return it unchanged.

    Raises
    ------
    AdrobustError
        When ``value`` is neither a mode nor a path to an existing weights file.
    """
    if value in WEIGHTS_MODES:
        return value
    path = Path(value).expanduser()
    if path.suffix.lower() not in WEIGHTS_FILE_SUFFIXES:
        raise AdrobustError(
            f"invalid weights {value!r}: use one of {', '.join(WEIGHTS_MODES)} or a path to a "
            f"{'/'.join(WEIGHTS_FILE_SUFFIXES)} file"
        )
    if not path.is_file():
        raise AdrobustError(f"weights file not found: {str(path)!r}; check the path given to weights")
    return value


def file_sha256(path: Path) -> str:
    """Return the sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hub_offline() -> bool:
    """Return whether ``HF_HUB_OFFLINE`` forbids network access."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def find_cached_weights(model: nn.Module) -> Path | None:
    """Return the model's pretrained weights file in the Hugging Face cache, without network access."""
    repo_id = (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id")
    if not repo_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in _HUB_FILENAMES:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _download_weights(model: nn.Module, model_name: str) -> Path:
    repo_id = (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id")
    how_to = (
        f"download the weights of {model_name!r} on a machine with network access (for example "
        f"`hf download {repo_id} model.safetensors`) and pass the file with "
        "--adrobust-weights PATH, or copy the Hugging Face cache to this machine"
    )
    if not repo_id:
        raise AdrobustError(f"{model_name!r} has no pretrained weights on the Hugging Face hub; pass a weights file")
    if hub_offline():
        raise AdrobustError(f"pretrained weights of {model_name!r} are not in the local cache and HF_HUB_OFFLINE is set: {how_to}")
    if not _hub_reachable():
        raise AdrobustError(f"pretrained weights of {model_name!r} are not cached and the hub is unreachable: {how_to}")

    from huggingface_hub import hf_hub_download

    logger.info("downloading %s from the Hugging Face hub", repo_id)
    return Path(hf_hub_download(repo_id, _HUB_FILENAMES[0]))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` file or a ``torch.save`` file.

    ``torch.save`` files are read with ``weights_only=True``, so a file cannot run code. A dict
    nested under ``model``, ``state_dict`` or ``teacher`` (DINOv2 training checkpoints) is unwrapped.

    Raises
    ------
    AdrobustError
        When the file cannot be read as a state dict.
    """
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors, pickle and zip errors share no base class.
        raise AdrobustError(
            f"failed to read weights file {str(path)!r}: {error}. The file may be truncated or in another format; "
            "download or export it again as .safetensors or a torch.save state dict"
        ) from error

    for key in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AdrobustError(f"weights file {str(path)!r} does not contain a state dict of tensors")

    # Training checkpoints of DINOv2 prefix the backbone's keys and also hold the heads
    # (dino_head., ibot_head.), which the backbone does not use.
    for prefix in ("backbone.", "module."):
        if any(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    return state


def load_weights_file(model: nn.Module, model_name: str, path: Path) -> None:
    """Load a timm or original-DINOv2 state dict into ``model``, strictly.

    Raises
    ------
    AdrobustError
        When keys are missing or unexpected, or a tensor shape differs; the message names the first
        few and suggests the backbone that probably matches.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = read_state_dict(path)
    try:
        state = checkpoint_filter_fn(state, model)
    except Exception as error:  # timm raises assorted errors for foreign layouts.
        raise AdrobustError(
            f"weights file {str(path)!r} does not match backbone {model_name!r}: {error}"
        ) from error
    state = {key: value for key, value in state.items() if not key.startswith("head.")}

    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{key}: file {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(state) & set(expected))
        if state[key].shape != expected[key].shape
    ]
    if missing or unexpected or shapes:
        details = []
        if missing:
            details.append(f"{_count(len(missing), 'missing key')} (e.g. {', '.join(missing[:3])})")
        if unexpected:
            details.append(f"{_count(len(unexpected), 'unexpected key')} (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            details.append(f"{_count(len(shapes), 'shape mismatch', 'shape mismatches')} (e.g. {shapes[0]})")
        # Shape mismatches or many foreign keys mean another architecture; a few missing keys
        # with matching shapes mean an incomplete file.
        if shapes or len(missing) + len(unexpected) > 4:
            advice = (
                "Pass the backbone the file was trained for with --adrobust-backbone "
                "(vit_small/base/large/giant_patch14_dinov2, or the _reg4_ variants for files with register tokens)"
            )
        else:
            advice = "The file looks incomplete or edited: export the full state dict of the model again"
        raise AdrobustError(
            f"weights file {str(path)!r} does not match backbone {model_name!r}: {'; '.join(details)}. {advice}"
        )
    model.load_state_dict(state, strict=True)


def _count(number: int, singular: str, plural: str | None = None) -> str:
    return f"{number} {singular if number == 1 else plural or singular + 's'}"


def resolve_weights(model: nn.Module, model_name: str, weights: str, seed: int) -> WeightsInfo:
    """Load the weights that ``weights`` names into ``model``, which starts from a random init.

    Parameters
    ----------
    model : nn.Module
        A timm model whose parameters were initialised under ``seed``.
    model_name : str
        timm name of ``model``, for messages.
    weights : str
        ``auto`` (cached pretrained weights when present, else the random init with an
        :class:`AdrobustWarning`), ``pretrained`` (cached or downloaded, else an error), ``random``,
        or a path to a weights file.
    seed : int
        Seed the random initialisation used, recorded in the returned info.

    Returns
    -------
    WeightsInfo
        Where the weights came from.

    Raises
    ------
    AdrobustError
        When ``pretrained`` weights cannot be obtained or a file does not fit the architecture.
    """
    validate_weights(weights)
    if weights == "random":
        return WeightsInfo(RANDOM_INIT, None, None, seed)

    if weights in ("auto", "pretrained"):
        path = find_cached_weights(model)
        if path is None and weights == "pretrained":
            path = _download_weights(model, model_name)
        if path is None:
            warnings.warn(
                AdrobustWarning(
                    f"no pretrained weights for {model_name!r} in the Hugging Face cache; running with a "
                    f"seeded random initialisation (seed {seed}). Results measure the protocol, not the "
                    "pretrained model: pass --adrobust-weights PATH or populate the cache for real figures"
                ),
                stacklevel=2,
            )
            return WeightsInfo(RANDOM_INIT, None, None, seed)
        load_weights_file(model, model_name, path)
        return WeightsInfo("pretrained", str(path), file_sha256(path), None)

    path = Path(weights).expanduser().resolve()
    load_weights_file(model, model_name, path)
    return WeightsInfo("file", str(path), file_sha256(path), None)
