"""ORBAlign time and accuracy per image at 512x512 on SyntheticGPD-style photographs.

Every photograph is a known homography of the print design, so the true input->reference warp is
known: the corner error is the mean distance (pixels) between the image corners mapped by the
estimated and by the true homography.

    python tools/bench_align.py --size 512 --images 40 --detect-scale 1.0 0.5 --pyramid-levels 8 4
    python tools/bench_align.py --size 512 --images 24 --designs 12 --detect-scale 1.0 --reference first best
    python tools/bench_align.py --size 512 --images 40 --designs 4 --detect-scale 1.0 --word-grid   # repetitive prints
    python tools/bench_align.py --size 512 --images 40 --designs 4 --detect-scale 1.0 --method guided ransac

``wrong warps`` counts alignments that passed the sanity checks with a corner error above 10 px: a wrong
warp that is not reported as a failure (repetitive prints give ambiguous ORB matches).

The corner error extrapolates the warp to the image corners, which on classic prints are plain fabric
whose weave phase and fibre noise are drawn anew for every photograph: nothing there can be matched, so
no image-based method can pin the warp down at the corners. ``print error`` is therefore reported too:
the mean displacement error over the print's own pixels (ink and logo, mapped into the reference photo),
the part of the image alignment can see; ``wrong on the print`` counts warps above 10 px there.
"""

from __future__ import annotations

import argparse
import copy
import re
import statistics
import time
from collections import Counter

import cv2
import numpy as np
import torch


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def corner_error(estimated: np.ndarray, true: np.ndarray, size: int) -> float:
    corners = np.float32([[0, 0], [size, 0], [size, size], [0, size]]).reshape(-1, 1, 2)
    a = cv2.perspectiveTransform(corners, estimated)
    b = cv2.perspectiveTransform(corners, true)
    return float(np.linalg.norm(a - b, axis=-1).mean())


def coverage(homography: np.ndarray, size: int) -> float:
    """Share of the reference canvas that the warped input covers (the rest is filled from the reference)."""
    ones = np.ones((size, size), np.float32)
    return float(cv2.warpPerspective(ones, homography, (size, size), flags=cv2.INTER_NEAREST, borderValue=0).mean())


WRONG_WARP_PX = 10.0


def print_error(estimated: np.ndarray, true: np.ndarray, print_points: np.ndarray) -> float:
    """Mean distance (px) between the print's points mapped by the estimated and by the true warp."""
    a = cv2.perspectiveTransform(print_points, estimated)
    b = cv2.perspectiveTransform(print_points, true)
    return float(np.linalg.norm(a - b, axis=-1).mean())


def print_points_in_photo(design: object, pose: np.ndarray, step: int = 4) -> np.ndarray:
    """(K, 1, 2) positions (every ``step``-th pixel) of the print's ink and logo in a photograph of pose ``pose``."""
    from anomalib_ext.data.garment_print import render_print_layers

    ink, accent = render_print_layers(design)
    ys, xs = np.nonzero(np.maximum(ink, accent)[::step, ::step] > 0.5)
    points = np.float32(np.stack([xs, ys], 1) * step).reshape(-1, 1, 2)
    return cv2.perspectiveTransform(points, pose)


def photographs(
    design_seed: int,
    count: int,
    size: int,
    *,
    word_grid: bool = False,
    with_design: bool = False,
) -> tuple[list[torch.Tensor], list[np.ndarray]] | tuple[list[torch.Tensor], list[np.ndarray], object]:
    """``count`` photographs of one printed design and their true poses (design frame -> photo) (and the design)."""
    from anomalib_ext.data.garment_print import (
        make_design,
        make_word_grid_design,
        photograph,
        random_pose,
        render_design,
    )

    make = make_word_grid_design if word_grid else make_design
    design = make(np.random.default_rng(design_seed), size)
    shots, poses = [], []
    for i in range(count):
        rng = np.random.default_rng([design_seed, i])
        rendered = render_design(design, rng, None)
        poses.append(random_pose(design, copy.deepcopy(rng)))  # the same draws photograph() makes
        image, _ = photograph(*rendered, design, rng)
        shots.append(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)))
    return (shots, poses, design) if with_design else (shots, poses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=40, help="photographs aligned per design (plus the candidates)")
    parser.add_argument("--designs", type=int, default=1, help="print designs (seeds 0..N-1)")
    parser.add_argument("--detect-scale", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--pyramid-levels", type=int, nargs="+", default=[8], help="ORB scale-pyramid levels to try")
    parser.add_argument(
        "--reference",
        nargs="+",
        default=["first"],
        choices=["first", "best"],
        help="AMFS's reference choice: the first photograph or the one others align to best",
    )
    parser.add_argument("--method", nargs="+", default=["guided"], choices=["guided", "ransac"])
    parser.add_argument(
        "--min-agreement", type=float, default=None, help="override ORBSettings.min_agreement (-1: no check)"
    )
    parser.add_argument(
        "--word-grid", action="store_true", help="word-grid prints (repetitive text) instead of classic ones"
    )
    args = parser.parse_args()

    from anomalib_ext.transforms import ORBAlign
    from anomalib_ext.transforms.align import ORBSettings, choose_reference

    data = [
        photographs(seed, args.images + 1, args.size, word_grid=args.word_grid, with_design=True)
        for seed in range(args.designs)
    ]
    settings = [
        (scale, levels, mode, method)
        for scale in args.detect_scale
        for levels in args.pyramid_levels
        for mode in args.reference
        for method in args.method
    ]
    for scale, levels, mode, method in settings:
        extra = {} if args.min_agreement is None else {"min_agreement": args.min_agreement}
        orb = ORBSettings(detect_scale=scale, pyramid_levels=levels, method=method, **extra)
        times, errors, print_errors, covered, failures, picks, reasons = [], [], [], [], 0, [], Counter()
        for shots, poses, design in data:
            ref = choose_reference(shots, mode, orb)
            picks.append(ref)
            align = ORBAlign(shots[ref], orb)
            points = print_points_in_photo(design, poses[ref])
            for i, (shot, pose) in enumerate(zip(shots, poses, strict=True)):
                if i == ref:
                    continue
                start = time.perf_counter()
                align(shot)
                times.append((time.perf_counter() - start) * 1000)
                if align.last_result.ok:
                    # true input -> reference warp; its inverse maps the print points back into the input
                    true = poses[ref] @ np.linalg.inv(pose)
                    errors.append(corner_error(align.last_result.homography, true, args.size))
                    in_input = cv2.perspectiveTransform(points, np.linalg.inv(true))
                    print_errors.append(print_error(align.last_result.homography, true, in_input))
                    covered.append(coverage(align.last_result.homography, args.size))
                else:
                    reasons[re.sub(r"[\d.]+", "N", align.last_result.reason)] += 1  # "only N RANSAC inliers"
            failures += align.failures
        wrong = sum(e > WRONG_WARP_PX for e in errors)
        wrong_print = sum(e > WRONG_WARP_PX for e in print_errors)
        print(
            f"{'word-grid' if args.word_grid else 'classic'} prints: "
            f"ORBAlign method={method} min_agreement={orb.min_agreement} {args.size}x{args.size} "
            f"detect_scale={scale} pyramid_levels={levels} reference={mode} "
            f"(picked {picks}): median {statistics.median(times):.1f} ms, p90 {np.percentile(times, 90):.1f} ms "
            "per image (estimate + warp); "
            f"corner error median {_median(errors):.2f} px, max {max(errors, default=np.nan):.2f} px; "
            f"print error median {_median(print_errors):.2f} px, max {max(print_errors, default=np.nan):.2f} px; "
            f"{failures} fallbacks of {len(times)}, {wrong} wrong warps (corner error > {WRONG_WARP_PX:.0f} px) and "
            f"{wrong_print} wrong on the print (> {WRONG_WARP_PX:.0f} px) passed the checks; "
            f"fallback reasons {dict(reasons)}; canvas covered by the input mean {_mean(covered):.3f}, "
            f"min {min(covered, default=np.nan):.3f}; OpenCV threads {cv2.getNumThreads()}, "
            f"torch threads {torch.get_num_threads()}",
        )


if __name__ == "__main__":
    main()
