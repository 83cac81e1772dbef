"""Time the robustness protocol against its floor, the naive loop and a warm re-run, in one process.

For N test images, E nonzero budgets and R references the floor is what the bare timm backbone
needs: R forwards, N forward+backward passes, N x E forwards and N forwards for the noise control
(plus N/2 forwards for the ``surrogate`` attack). Every figure is measured in this one run, on the
same images and seeded weights, so the ratios hold even on a shared, noisy machine.

Run: ``HF_HUB_OFFLINE=1 python benchmarks/bench_protocol.py`` (add ``--json`` for one JSON object).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch

from pytest_adrobust.cache import ScoreCache
from pytest_adrobust.data import load_dataset, load_images, sample_case
from pytest_adrobust.detectors import AnomalyDINO
from pytest_adrobust.evaluation import CaseKey, evaluate_case
from pytest_adrobust.settings import parse_eps


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="elpv:mono", help="dataset spec (default: elpv:mono)")
    parser.add_argument("--backbone", default="vit_small_patch14_dinov2.lvd142m", help="timm model name")
    parser.add_argument("--resolution", type=int, default=224, help="smaller image edge in pixels (default: 224)")
    parser.add_argument("--max-images", type=int, default=32, help="test images per class (default: 32)")
    parser.add_argument("--shots", type=int, default=4, help="reference images (default: 4)")
    parser.add_argument("--eps", default="2/255,4/255,8/255", help="nonzero budgets (default: 2/255,4/255,8/255)")
    parser.add_argument("--attack", choices=("score", "surrogate", "both"), default="both", help="attack (default: both)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per pass (default: 8)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved repetitions, fastest kept (default: 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser.parse_args()


def floor_seconds(model: torch.nn.Module, references: torch.Tensor, images: torch.Tensor, budgets: int,
                  attack: str, batch_size: int, device: torch.device) -> float:
    """Time the bare backbone doing exactly the passes the protocol needs, and nothing else."""
    def forward(batch: torch.Tensor) -> None:
        with torch.no_grad():
            model.forward_features(batch.to(device))

    def forward_backward(batch: torch.Tensor) -> None:
        x = batch.to(device).requires_grad_(True)
        model.forward_features(x).sum().backward()

    started = time.perf_counter()
    for start in range(0, len(references), batch_size):
        forward(references[start : start + batch_size])
    if attack == "surrogate":
        for start in range(0, len(images) // 2, batch_size):
            forward(images[start : min(start + batch_size, len(images) // 2)])
    for start in range(0, len(images), batch_size):
        forward_backward(images[start : start + batch_size])
    for _ in range(budgets + 1):  # Every nonzero budget, then the noise control.
        for start in range(0, len(images), batch_size):
            forward(images[start : start + batch_size])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def naive_seconds(detector: AnomalyDINO, references: list, test: list, budgets: list[float], batch_size: int) -> float:
    """Time the loop that recomputes the clean forward+backward for every budget, as a script would.

    It loads the same images and runs the same noise control as the plugin, so that only the
    sharing of the clean pass differs.
    """
    from pytest_adrobust.attacks import fgsm, random_sign, score_attack_loss

    started = time.perf_counter()
    reference_images = load_images(references, detector.resolution, detector.patch_size)
    images = load_images(test, detector.resolution, detector.patch_size)
    labels = np.array([record.label for record in test])
    detector.fit(reference_images)
    for eps in budgets:
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(detector.device).requires_grad_(True)
            y = torch.as_tensor(labels[start : start + batch_size], device=detector.device)
            scores, _ = detector.score_and_embed(x)
            (gradient,) = torch.autograd.grad(score_attack_loss(scores, y), x)
            detector.score(fgsm(x.detach(), gradient.sign(), eps))
    noise = random_sign(images.shape, torch.Generator().manual_seed(0))
    for start in range(0, len(images), batch_size):
        detector.score(fgsm(images[start : start + batch_size], noise[start : start + batch_size], max(budgets)))
    return time.perf_counter() - started


def main() -> int:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    budgets = [parse_eps(text) for text in args.eps.split(",")]
    attacks = ("score", "surrogate") if args.attack == "both" else (args.attack,)

    split = load_dataset(args.dataset)
    references, test = sample_case(split, args.shots, args.max_images, 0)
    detector = AnomalyDINO(args.backbone, weights="random", resolution=args.resolution, device=device)
    reference_images = load_images(references, detector.resolution, detector.patch_size)
    images = load_images(test, detector.resolution, detector.patch_size)
    bare = timm.create_model(args.backbone, pretrained=False, num_classes=0, img_size=args.resolution,
                             dynamic_img_size=True).eval().requires_grad_(False).to(device)

    # One untimed pass of each kind first, so that no measurement pays for kernel selection and
    # allocator growth on first use.
    floor_seconds(bare, reference_images[:1], images[: args.batch_size], 0, "score", args.batch_size, device)
    detector.fit(reference_images[:1])
    naive_seconds(detector, references[:1], test[:2], [budgets[0].value], args.batch_size)

    # Interleaving the measurements and keeping the fastest of each kind cancels most of the drift
    # that other processes on a shared machine cause between one measurement and the next.
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as directory:
        for attack in attacks:
            key = CaseKey(split.spec, args.shots, 0, args.max_images, attack, detector.fingerprint())
            times: dict[str, list[float]] = {"floor": [], "plugin": [], "warm": [], "naive": []}
            for repeat in range(args.repeat):
                times["floor"].append(
                    floor_seconds(bare, reference_images, images, len(budgets), attack, args.batch_size, device)
                )

                cache = ScoreCache(Path(directory) / f"{attack}-{repeat}")
                started = time.perf_counter()
                evaluate_case(detector, split, key, budgets, args.batch_size, cache=cache)
                times["plugin"].append(time.perf_counter() - started)

                started = time.perf_counter()
                evaluate_case(detector, split, key, budgets, args.batch_size, cache=cache)
                times["warm"].append(time.perf_counter() - started)

                if attack == "score":
                    values = [eps.value for eps in budgets]
                    times["naive"].append(naive_seconds(detector, references, test, values, args.batch_size))

            best = {name: min(values) if values else float("nan") for name, values in times.items()}
            results[attack] = {
                "floor_seconds": best["floor"],
                "plugin_seconds": best["plugin"],
                "naive_seconds": best["naive"],
                "warm_seconds": best["warm"],
                "floor_ratio": best["plugin"] / best["floor"],
                "naive_speedup": best["naive"] / best["plugin"],
                "warm_speedup": best["plugin"] / best["warm"],
            }

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    settings = {
        "dataset": args.dataset,
        "backbone": args.backbone,
        "weights": "random-init (seed 0)",
        "resolution": args.resolution,
        "test_images": len(test),
        "references": len(references),
        "budgets": [str(eps) for eps in budgets],
        "batch_size": args.batch_size,
        "repeat": args.repeat,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
    }
    primary = results["score" if "score" in results else attacks[0]]
    summary = {
        "floor_ratio": primary["floor_ratio"],
        "naive_speedup": primary["naive_speedup"],
        "warm_speedup": primary["warm_speedup"],
        "peak_rss_mb": peak_rss_mb,
        "attacks": results,
        "settings": settings,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0

    print("settings: " + ", ".join(f"{name}={value}" for name, value in settings.items()))
    for attack, figures in results.items():
        print(
            f"{attack:9s} floor {figures['floor_seconds']:7.1f} s | plugin {figures['plugin_seconds']:7.1f} s | "
            f"warm {figures['warm_seconds']:6.2f} s | naive {figures['naive_seconds']:7.1f} s"
        )
        print(
            f"{'':9s} floor_ratio (plugin/floor) {figures['floor_ratio']:.3f} | "
            f"naive_speedup (naive/plugin) {figures['naive_speedup']:.2f} | "
            f"warm_speedup (cold/warm) {figures['warm_speedup']:.1f}"
        )
    print(f"peak_rss_mb {peak_rss_mb:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
