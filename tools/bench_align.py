"""ORBAlign time per image (estimate + warp) at 512x512 on SyntheticGPD photographs.

    python tools/bench_align.py --size 512 --images 40
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=40)
    args = parser.parse_args()

    from anomalib_ext.data.garment_print import make_design, photograph, render_design
    from anomalib_ext.transforms import ORBAlign

    design = make_design(np.random.default_rng(0), args.size)
    shots = []
    for i in range(args.images + 1):
        rng = np.random.default_rng([0, i])
        image, mask = photograph(*render_design(design, rng, None), design, rng)
        shots.append(torch.from_numpy(image.transpose(2, 0, 1).copy()))
    align = ORBAlign(shots[0])
    times = []
    for shot in shots[1:]:
        start = time.perf_counter()
        align(shot)
        times.append((time.perf_counter() - start) * 1000)
    print(f"ORBAlign {args.size}x{args.size}: median {statistics.median(times):.1f} ms, "
          f"p90 {np.percentile(times, 90):.1f} ms per image; {align.failures} fallbacks of {args.images}; "
          f"OpenCV threads {cv2.getNumThreads()}, torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
