"""Where the end-to-end time of an exported model goes: host prepare (resize + host steps), IR, restore.

Runs an ``anomalib-ext export`` folder on a few images the way the Inferencer does, and times each part
in the order of the end-to-end path (so the host steps run right after an IR call, as in deployment):

    python experiments/house/bench_e2e_split.py --model-dir results/latency_512/work/amfs__sgpd_p001__512/openvino_fp32 \
        --images 'DATA/p001/test/good/*.jpg'

``prepare`` = resize + host steps (AMFS: alignment), ``host steps alone`` = the host steps on an image
already at the input size, ``restore`` = maps back into the input frame (AMFS: warp back),
``end to end`` = ``Inferencer.predict_arrays`` on one image. Medians over ``--repeats`` after 3 warm-ups.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import time

import numpy as np
import torch

from anomalib_ext.data.mvtec_like import read_rgb, resize_like_preprocessor
from anomalib_ext.deploy.inferencer import Inferencer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--images", required=True, help="a glob of RGB images (the first 8 are used)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    paths = sorted(glob.glob(args.images))[:8]  # ruff: ignore[glob] - a user pattern, absolute or relative
    if not paths:
        parser.error(f"no image matches {args.images!r}")
    images = [read_rgb(p) for p in paths]
    inferencer = Inferencer(args.model_dir)
    times: dict[str, list[float]] = {"prepare": [], "IR": [], "restore": [], "end to end": [], "host steps alone": []}
    for round_index in range(3 + args.repeats):
        image = images[round_index % len(images)]
        start = time.perf_counter()
        tensor, state = inferencer.prepare(image)
        prepared = time.perf_counter()
        outputs = inferencer.infer(tensor[None])
        inferred = time.perf_counter()
        maps = torch.from_numpy(outputs["anomaly_map"].reshape(1, 1, *inferencer.input_size).astype(np.float32))
        inferencer.host_steps.restore(maps, [state])
        restored = time.perf_counter()
        inferencer.predict_arrays([image])
        finished = time.perf_counter()
        inferencer.infer(tensor[None])  # the host steps alone, right after an IR call as in the path above
        resized = resize_like_preprocessor(
            torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None], inferencer.input_size
        )
        host_start = time.perf_counter()
        inferencer.host_steps.prepare(resized)
        host_end = time.perf_counter()
        if round_index >= 3:
            times["prepare"].append(prepared - start)
            times["IR"].append(inferred - prepared)
            times["restore"].append(restored - inferred)
            times["end to end"].append(finished - restored)
            times["host steps alone"].append(host_end - host_start)
    print(f"{args.model_dir}: {len(paths)} images, median of {args.repeats} after 3 warm-ups")
    for name, values in times.items():
        print(f"  {name:18s} {statistics.median(values) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
