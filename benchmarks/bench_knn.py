"""Compare faiss and torch for the no-gradient nearest-neighbour search over a range of bank sizes.

The detector scores without gradients with faiss on the CPU and with the torch path elsewhere.
This script measures both on the CPU, so that the choice rests on a measured crossover.

Run: ``python benchmarks/bench_knn.py`` (about half a minute on two cores).
"""

from __future__ import annotations

import argparse
import time

import torch

from pytest_adrobust.detectors.knn import FaissBank, torch_patch_distances


def fastest(function, repeats: int) -> float:
    """Return the fastest of ``repeats`` timings of ``function()``, in seconds."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        timings.append(time.perf_counter() - started)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=384, help="feature dimension (default: 384, ViT-S)")
    parser.add_argument("--queries", type=int, default=8 * 1024, help="query patches per search (default: 8192)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per size, fastest kept (default: 3)")
    args = parser.parse_args()

    torch.manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(1, args.queries, args.dim), dim=-1)
    print(f"{'bank rows':>10} {'faiss s':>9} {'torch s':>9} {'torch/faiss':>12}")
    for rows in (256, 1024, 4096, 16384, 65536):
        bank = torch.nn.functional.normalize(torch.randn(rows, args.dim), dim=1)
        index = FaissBank(bank)
        faiss_seconds = fastest(lambda: index.patch_distances(queries), args.repeats)
        with torch.no_grad():
            torch_seconds = fastest(lambda: torch_patch_distances(queries, bank), args.repeats)
        print(f"{rows:>10} {faiss_seconds:>9.4f} {torch_seconds:>9.4f} {torch_seconds / faiss_seconds:>12.2f}")


if __name__ == "__main__":
    main()
