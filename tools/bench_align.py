"""ORBAlign time and accuracy per image at 512x512 on SyntheticGPD-style photographs.

Every photograph is a known homography of the print design, so the true input->reference warp is
known: the corner error is the mean distance (pixels) between the image corners mapped by the
estimated and by the true homography.

    python tools/bench_align.py --size 512 --images 40 --detect-scale 1.0 0.5 --pyramid-levels 8 4
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import cv2
import numpy as np
import torch


def corner_error(estimated: np.ndarray, true: np.ndarray, size: int) -> float:
    corners = np.float32([[0, 0], [size, 0], [size, size], [0, size]]).reshape(-1, 1, 2)
    a = cv2.perspectiveTransform(corners, estimated)
    b = cv2.perspectiveTransform(corners, true)
    return float(np.linalg.norm(a - b, axis=-1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--detect-scale", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--pyramid-levels", type=int, nargs="+", default=[8], help="ORB scale-pyramid levels to try")
    args = parser.parse_args()

    from anomalib_ext.data.garment_print import make_design, photograph, random_pose, render_design
    from anomalib_ext.transforms import ORBAlign
    from anomalib_ext.transforms.align import ORBSettings

    design = make_design(np.random.default_rng(0), args.size)
    shots, poses = [], []
    for i in range(args.images + 1):
        rng = np.random.default_rng([0, i])
        rendered = render_design(design, rng, None)
        poses.append(random_pose(design, copy.deepcopy(rng)))  # the same draws photograph() makes
        image, _ = photograph(*rendered, design, rng)
        shots.append(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)))
    for scale, levels in [(scale, levels) for scale in args.detect_scale for levels in args.pyramid_levels]:
        align = ORBAlign(shots[0], ORBSettings(detect_scale=scale, pyramid_levels=levels))
        times, errors = [], []
        for shot, pose in zip(shots[1:], poses[1:], strict=True):
            start = time.perf_counter()
            align(shot)
            times.append((time.perf_counter() - start) * 1000)
            if align.last_result.ok:
                errors.append(corner_error(align.last_result.homography, poses[0] @ np.linalg.inv(pose), args.size))
        print(f"ORBAlign {args.size}x{args.size} detect_scale={scale} pyramid_levels={levels}: median {statistics.median(times):.1f} ms, "
              f"p90 {np.percentile(times, 90):.1f} ms per image (estimate + warp); corner error median "
              f"{statistics.median(errors):.2f} px, max {max(errors):.2f} px; {align.failures} fallbacks of {args.images}; "
              f"OpenCV threads {cv2.getNumThreads()}, torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
