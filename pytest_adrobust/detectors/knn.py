"""Nearest-neighbour patch distances: faiss for scoring without gradients, torch for gradients."""

from __future__ import annotations

import math

import faiss
import numpy as np
import torch


def top_fraction_count(num_patches: int, fraction: float) -> int:
    """Return how many of ``num_patches`` patch distances the image score averages.

    AnomalyDINO averages the highest 1% of patch distances; at least one patch always counts.
    """
    # The tolerance keeps products such as 100 * 0.29 = 28.999999999999996 at their exact value.
    return max(1, int(math.floor(num_patches * fraction + 1e-9)))


def pool_image_scores(patch_distances: torch.Tensor, fraction: float) -> torch.Tensor:
    """Average the highest ``fraction`` of each image's patch distances.

    Parameters
    ----------
    patch_distances : torch.Tensor
        ``(B, P)`` cosine distances of each patch to its nearest reference patch.
    fraction : float
        Share of patches that count, in (0, 1].

    Returns
    -------
    torch.Tensor
        ``(B,)`` image scores, differentiable where the input is.
    """
    k = top_fraction_count(patch_distances.shape[1], fraction)
    return patch_distances.topk(k, dim=1).values.mean(dim=1)


def torch_patch_distances(features: torch.Tensor, bank: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Compute the cosine distance from each patch to its nearest bank patch, keeping gradients.

    Parameters
    ----------
    features : torch.Tensor
        ``(B, P, D)`` L2-normalised patch features.
    bank : torch.Tensor
        ``(M, D)`` L2-normalised reference patch features on the same device.
    chunk : int
        Bank rows per matrix product, which bounds the ``(B, P, chunk)`` similarity block in memory.

    Returns
    -------
    torch.Tensor
        ``(B, P)`` distances ``1 - max cosine similarity``, in [0, 2].
    """
    best = None
    for start in range(0, bank.shape[0], chunk):
        similarity = features @ bank[start : start + chunk].T
        block_best = similarity.max(dim=2).values
        best = block_best if best is None else torch.maximum(best, block_best)
    assert best is not None, "the memory bank is empty"
    return 1.0 - best


class FaissBank:
    """Exact inner-product index over L2-normalised reference patches, for no-gradient scoring."""

    def __init__(self, bank: torch.Tensor) -> None:
        vectors = np.ascontiguousarray(bank.detach().to("cpu", torch.float32).numpy())
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)

    def patch_distances(self, features: torch.Tensor) -> torch.Tensor:
        """Return the ``(B, P)`` cosine distance of each patch in ``(B, P, D)`` to its nearest reference patch."""
        batch, patches, dim = features.shape
        queries = np.ascontiguousarray(features.detach().to("cpu", torch.float32).reshape(-1, dim).numpy())
        similarity, _ = self.index.search(queries, 1)
        return torch.from_numpy(1.0 - similarity[:, 0]).reshape(batch, patches)
