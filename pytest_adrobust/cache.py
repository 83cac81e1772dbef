"""Content-addressed on-disk cache of a case's scores and gradient signs.

An entry is keyed by a sha256 over everything the scores depend on: the detector fingerprint
(weights and scoring settings), the preprocessing, the image bytes, the draw, the attack, the
seed, the batch size and the package versions. A warm run with the same key then needs no
model pass at all. Entries are written to a temporary file and renamed, so concurrent writers
(pytest-xdist workers computing the same case) and crashes never leave a partial entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, final

import numpy as np

logger = logging.getLogger("pytest_adrobust")

CACHE_FORMAT = 1


def cache_key(parts: dict[str, Any]) -> str:
    """Return the sha256 hex digest of ``parts`` serialised as canonical JSON."""
    payload = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def pack_signs(signs: np.ndarray) -> np.ndarray:
    """Pack an ``int8`` array of values in {-1, 0, 1} into 2 bits per value."""
    codes = (signs.reshape(-1).astype(np.int16) + 1).astype(np.uint8)
    padded = np.zeros(-(-codes.size // 4) * 4, dtype=np.uint8)
    padded[: codes.size] = codes
    quads = padded.reshape(-1, 4)
    return quads[:, 0] | (quads[:, 1] << 2) | (quads[:, 2] << 4) | (quads[:, 3] << 6)


def unpack_signs(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Invert :func:`pack_signs` for an array of ``shape``."""
    quads = np.stack([(packed >> shift) & 3 for shift in (0, 2, 4, 6)], axis=1).reshape(-1)
    size = int(np.prod(shape))
    return (quads[:size].astype(np.int8) - 1).reshape(shape)


@final
class ScoreCache:
    """Directory of ``.npz`` entries, one per case key."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npz"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """Return the arrays stored under ``key``, or ``None`` when absent or unreadable."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            # A damaged entry costs a recomputation, never a wrong result.
            logger.warning("ignoring unreadable cache entry %s: %s", path, error)
            return None

    def save(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Store ``arrays`` under ``key`` atomically."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{key[:12]}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(buffer.getvalue())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
