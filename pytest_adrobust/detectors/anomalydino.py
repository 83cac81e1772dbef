"""AnomalyDINO: DINOv2 patch features matched to a few normal references by cosine kNN.

The reference method is Damm et al., "AnomalyDINO: Boosting Patch-based Few-shot Anomaly Detection
with DINOv2" (WACV 2025): last-layer patch tokens, nearest-neighbour cosine distance to the patches
of the reference images, and an image score equal to the mean of the highest 1% of patch distances.
Its two optional preprocessing steps, zero-shot masking of test patches and rotation of the
references, live in :mod:`pytest_adrobust.detectors.preprocessing`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Final

import timm
import torch
import torch.nn.functional as F
from torch import nn

from pytest_adrobust.detectors.knn import FaissBank, pool_image_scores, torch_patch_distances
from pytest_adrobust.detectors.preprocessing import REFERENCE_ANGLES, foreground_mask, rotated_copies
from pytest_adrobust.detectors.weights import RANDOM_INIT, WeightsInfo, resolve_weights
from pytest_adrobust.errors import AdrobustError

logger = logging.getLogger("pytest_adrobust")

DEFAULT_BACKBONE: Final = "vit_small_patch14_dinov2.lvd142m"
DEFAULT_RESOLUTION: Final = 448
IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)


def create_backbone(name: str, resolution: int, seed: int) -> nn.Module:
    """Create a timm ViT with a seeded random initialisation and no classifier head.

    Raises
    ------
    AdrobustError
        When timm does not know ``name``, or the model is not a vision transformer that takes an
        image size (a CNN, for example).
    """
    unknown = None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return timm.create_model(
                name, pretrained=False, num_classes=0, img_size=resolution, dynamic_img_size=True
            )
    except RuntimeError as error:
        if "Unknown model" not in str(error):
            raise
        unknown = f"unknown backbone {name!r}: use a timm model name such as {', '.join(timm.list_models('*dinov2*'))}"
    except TypeError as error:
        # timm passes img_size and dynamic_img_size to the model class, which only ViTs accept.
        unknown = (
            f"backbone {name!r} is not a vision transformer with patch tokens ({error}); wrap it with "
            "pytest_adrobust.detectors.from_token_module and override the adrobust_detector fixture"
        )
    raise AdrobustError(unknown)


class AnomalyDINO(nn.Module):
    """DINOv2 kNN few-shot anomaly detector, differentiable from pixels to image scores.

    Parameters
    ----------
    backbone : str
        timm model name; the default is DINOv2 ViT-S/14 with its LVD-142M pretrained tag.
    weights : str
        ``auto``, ``pretrained``, ``random`` or a path to a ``.safetensors``/``.pth`` file; see
        :func:`pytest_adrobust.detectors.weights.resolve_weights`.
    resolution : int
        Smaller image edge in pixels after the one resize on load (448 in AnomalyDINO).
    device : str or torch.device
        Where the backbone runs. Scoring without gradients uses faiss on the CPU and the torch
        path elsewhere.
    top_fraction : float
        Share of the highest patch distances that the image score averages (1% in AnomalyDINO).
    seed : int
        Seed of the random initialisation, used whenever no weights are loaded.
    masking : bool
        Whether to zero the distances of background patches, estimated per test image from its
        own patch tokens by :func:`~pytest_adrobust.detectors.preprocessing.foreground_mask`.
        Settable later through the ``masking`` attribute.
    rotation : bool
        Whether ``fit`` also stores the patches of each reference rotated by 45, 90, ..., 315
        degrees. Settable later through the ``rotation`` attribute, which takes effect at the
        next ``fit``.
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        *,
        weights: str = "auto",
        resolution: int = DEFAULT_RESOLUTION,
        device: str | torch.device = "cpu",
        top_fraction: float = 0.01,
        seed: int = 0,
        masking: bool = False,
        rotation: bool = False,
    ) -> None:
        if not isinstance(resolution, int) or resolution < 14:
            raise AdrobustError(f"invalid resolution {resolution!r}: use an integer of at least 14 pixels")
        _check_flag("masking", masking)
        _check_flag("rotation", rotation)
        model = create_backbone(backbone, resolution, seed)
        info = resolve_weights(model, backbone, weights, seed)
        self._setup(model, backbone, info, resolution, device, top_fraction, masking, rotation)

    @classmethod
    def from_module(
        cls,
        model: nn.Module,
        name: str,
        *,
        resolution: int,
        device: str | torch.device = "cpu",
        top_fraction: float = 0.01,
        weights: str = "user module",
        masking: bool = False,
        rotation: bool = False,
    ) -> AnomalyDINO:
        """Wrap an existing timm ``VisionTransformer`` (any size) as the detector's backbone.

        The module must provide ``forward_features`` returning ``(B, T, D)`` tokens after the final
        norm, ``num_prefix_tokens`` and ``patch_embed.patch_size``. ``weights`` describes where its
        weights came from in summaries. ``masking`` and ``rotation`` are as in the constructor.
        """
        _check_flag("masking", masking)
        _check_flag("rotation", rotation)
        detector = cls.__new__(cls)
        info = WeightsInfo(weights, None, None, None)
        detector._setup(model, name, info, resolution, device, top_fraction, masking, rotation)
        return detector

    def _setup(
        self,
        model: nn.Module,
        name: str,
        info: WeightsInfo,
        resolution: int,
        device: str | torch.device,
        top_fraction: float,
        masking: bool,
        rotation: bool,
    ) -> None:
        nn.Module.__init__(self)
        if not 0.0 < top_fraction <= 1.0:
            raise AdrobustError(f"invalid top_fraction {top_fraction!r}: use a share in (0, 1]")
        patch = model.patch_embed.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
        self.backbone_name = name
        self.weights_info = info
        self.resolution = resolution
        self.top_fraction = top_fraction
        self.device = torch.device(device)

        # Frozen and in eval mode: dropout or drop-path would make the attacked and clean passes
        # see different networks, and the attack needs gradients for the input only.
        model.eval()
        model.requires_grad_(False)
        self.model = model.to(self.device)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1))
        self.bank: torch.Tensor | None = None
        self._faiss: FaissBank | None = None
        self._rotation = rotation
        self.precision = "fp32"
        """``fp32``, or ``bf16`` for the backbone under autocast (CUDA, or CPUs with bf16 support)."""
        self.masking = masking
        self._fingerprint: str | None = None
        self._fingerprint_key: tuple[str, tuple[tuple[str, int, int], ...]] | None = None
        self.eval()

    def train(self, mode: bool = True) -> AnomalyDINO:
        """Keep the backbone in eval mode whatever ``mode`` is, because the protocol needs a fixed network."""
        return super().train(False)

    @property
    def masking(self) -> bool:
        """Whether background patches, estimated per test image, get distance 0 before pooling."""
        return self._masking

    @masking.setter
    def masking(self, value: bool) -> None:
        _check_flag("masking", value)
        self._masking = value

    @property
    def rotation(self) -> bool:
        """Whether ``fit`` adds the eight 45-degree rotations of each reference to the memory bank.

        Changing it drops a fitted memory bank, so scoring raises until ``fit`` runs again
        instead of using a bank built under the other setting.
        """
        return self._rotation

    @rotation.setter
    def rotation(self, value: bool) -> None:
        _check_flag("rotation", value)
        if value != self._rotation and self.bank is not None:
            logger.info("rotation changed to %s: the memory bank is dropped until the next fit", value)
            self.bank = None
            self._faiss = None
        self._rotation = value

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Run the backbone and return its last-layer patch tokens ``(B, P, D)`` of images in [0, 1].

        The tokens come after the backbone's final norm and before any L2 normalisation, which is
        what the zero-shot mask thresholds. ImageNet normalisation happens here, inside the
        differentiable path, so gradients and budgets refer to pixel values. Class and register
        tokens are dropped, and patches follow the grid in row-major order.

        Raises
        ------
        AdrobustError
            When ``images`` is not ``(B, 3, H, W)`` with ``H`` and ``W`` multiples of the patch size.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise AdrobustError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[2] % self.patch_size or images.shape[3] % self.patch_size:
            raise AdrobustError(
                f"image size {tuple(images.shape[2:])} is not a multiple of the patch size {self.patch_size}; "
                "load images with pytest_adrobust.data.load_images, which crops them"
            )
        normalised = (images - self.mean) / self.std
        if self.precision == "bf16":
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                tokens = self.model.forward_features(normalised)
            tokens = tokens.float()
        else:
            tokens = self.model.forward_features(normalised)
        return tokens[:, self.num_prefix_tokens :]

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """Return L2-normalised last-layer patch tokens ``(B, P, D)`` of images in [0, 1].

        See :meth:`patch_tokens` for the preprocessing and the input checks.
        """
        return F.normalize(self.patch_tokens(images), dim=-1)

    def patch_mask(self, images: torch.Tensor) -> torch.Tensor:
        """Return the ``(B, P)`` boolean mask of patches whose distances count in the image score.

        With ``masking`` off every patch counts. With it on, the mask is the zero-shot foreground
        estimate computed from the images' own tokens, without gradients.
        """
        with torch.no_grad():
            tokens = self.patch_tokens(images)
            return self._mask_from_tokens(tokens, images)

    def _mask_from_tokens(self, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        if not self.masking:
            return torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        grid = (images.shape[2] // self.patch_size, images.shape[3] // self.patch_size)
        return foreground_mask(tokens.detach(), grid)

    def _zero_background(self, distances: torch.Tensor, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        # torch.where passes gradients to the kept distances only, and the mask has none itself.
        mask = self._mask_from_tokens(tokens, images)
        return torch.where(mask, distances, torch.zeros_like(distances))

    @torch.no_grad()
    def fit(self, references: torch.Tensor, batch_size: int = 8) -> None:
        """Build the memory bank from the patches of normal reference images ``(R, 3, H, W)``.

        With ``rotation`` on, the bank contains the patches of each reference rotated by every angle
        in :data:`~pytest_adrobust.detectors.preprocessing.REFERENCE_ANGLES`, so it is eight times
        larger. The rotation applies to the references as given, already resized and cropped to
        the patch grid, while AnomalyDINO's code rotates the original image before it resizes and
        crops. References are never masked, as in AnomalyDINO's default setting.

        Raises
        ------
        AdrobustError
            When ``references`` is not a non-empty ``(R, 3, H, W)`` batch.
        """
        if references.ndim != 4 or references.shape[0] == 0:
            raise AdrobustError(f"expected at least one reference image (R, 3, H, W), got {tuple(references.shape)}")

        # Rotating one batch of references at a time bounds the float64 copies that rotation makes.
        per_batch = max(1, batch_size // len(REFERENCE_ANGLES)) if self.rotation else batch_size
        parts = []
        for start in range(0, references.shape[0], per_batch):
            chunk = references[start : start + per_batch].to(self.device)
            if self.rotation:
                chunk = rotated_copies(chunk)
            for offset in range(0, chunk.shape[0], batch_size):
                parts.append(self.patch_features(chunk[offset : offset + batch_size]).flatten(0, 1))
        self.bank = torch.cat(parts)
        self._faiss = FaissBank(self.bank) if self.device.type == "cpu" else None

    def _require_bank(self) -> torch.Tensor:
        if self.bank is None:
            raise AdrobustError("the detector has no references: call fit(references) first")
        return self.bank

    def score_and_embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return image scores ``(B,)`` and mean-pooled patch features ``(B, D)``, differentiable in ``images``.

        With ``masking`` on, the mask is recomputed from these images' own tokens, so an attacked
        image gets its own mask. The mask itself carries no gradient, while the distances of kept
        patches do. The pooled features average all patches, masked or not.
        """
        bank = self._require_bank()
        tokens = self.patch_tokens(images)
        features = F.normalize(tokens, dim=-1)
        distances = torch_patch_distances(features, bank)
        if self.masking:
            distances = self._zero_background(distances, tokens, images)
        scores = pool_image_scores(distances, self.top_fraction)
        return scores, features.mean(dim=1)

    def patch_distances(self, images: torch.Tensor) -> torch.Tensor:
        """Return the ``(B, P)`` nearest-neighbour cosine distances of each patch, without gradients.

        With ``masking`` on, patches outside the foreground mask get distance 0.
        """
        bank = self._require_bank()
        with torch.no_grad():
            tokens = self.patch_tokens(images)
            features = F.normalize(tokens, dim=-1)
            if self._faiss is not None:
                distances = self._faiss.patch_distances(features).to(self.device)
            else:
                distances = torch_patch_distances(features, bank)
            if self.masking:
                distances = self._zero_background(distances, tokens, images)
            return distances

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Return image scores ``(B,)`` without gradients (faiss search on the CPU)."""
        return pool_image_scores(self.patch_distances(images), self.top_fraction)

    def fingerprint(self) -> str:
        """Return a sha256 over the backbone's tensors and the scoring settings.

        The hash is recomputed whenever a setting changes or a tensor is replaced or modified in
        place (tracked through torch's version counters), so loading new weights changes it.
        ``masking`` and ``rotation`` enter the hash only when on, so detectors that leave them off
        keep the fingerprints they had before the options existed.
        """
        settings: dict[str, object] = {
            "detector": type(self).__name__,
            "backbone": self.backbone_name,
            "resolution": self.resolution,
            "top_fraction": self.top_fraction,
        }
        if self.masking:
            settings["masking"] = True
        if self.rotation:
            settings["rotation"] = True
        if self.precision != "fp32":
            settings["precision"] = self.precision
        encoded = json.dumps(settings, sort_keys=True)

        state = self.model.state_dict(keep_vars=True)
        versions = tuple((key, id(tensor), tensor._version) for key, tensor in state.items())
        cache_key = (encoded, versions)
        if self._fingerprint is None or self._fingerprint_key != cache_key:
            self._fingerprint_key = cache_key
            digest = hashlib.sha256()
            digest.update(encoded.encode())
            for key, tensor in sorted(self.model.state_dict().items()):
                digest.update(key.encode())
                digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def describe(self) -> dict[str, str]:
        """Return the backbone name, a description of its weights and any preprocessing that is on.

        The ``preprocessing`` key appears only when ``masking`` or ``rotation`` is on.
        """
        described = {"backbone": self.backbone_name, "weights": self.weights_info.describe()}
        steps = []
        if self.masking:
            steps.append("zero-shot masking")
        if self.rotation:
            steps.append("rotated references")
        if steps:
            described["preprocessing"] = ", ".join(steps)
        return described

    @property
    def random_init(self) -> bool:
        """Whether the backbone runs with random weights rather than trained ones."""
        return self.weights_info.source.startswith(RANDOM_INIT)


def _check_flag(name: str, value: object) -> None:
    """Raise :class:`AdrobustError` unless ``value`` is a bool, naming the setting ``name``."""
    if not isinstance(value, bool):
        raise AdrobustError(f"invalid {name} {value!r}: use True or False")
