"""Per-layer time of an OpenVINO IR on CPU (OpenVINO's PERF_COUNT), slowest nodes first.

    python tools/profile_ir.py results/latency_v2/amfs/weights/openvino/model.xml --size 512

Prints the median latency of the profiled runs, the slowest nodes and the time per node type.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("xml")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()

    import openvino as ov

    request = ov.Core().compile_model(args.xml, "CPU", {"PERF_COUNT": "YES"}).create_infer_request()
    image = np.random.default_rng(0).random((1, 3, args.size, args.size), dtype=np.float32)
    for _ in range(3):
        request.infer({0: image})
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        request.infer({0: image})
        times.append((time.perf_counter() - start) * 1000)
    nodes = request.get_profiling_info()  # of the last run
    print(f"median {statistics.median(times):.1f} ms over {args.repeats} runs (profiling on); last run's nodes:")
    for node in sorted(nodes, key=lambda n: -n.real_time.total_seconds())[: args.top]:
        print(
            f"{node.real_time.total_seconds() * 1000:8.2f} ms  {node.node_type:18s} {node.exec_type:24s} "
            f"{node.node_name[:80]}",
        )
    per_type = defaultdict(float)
    for node in nodes:
        per_type[node.node_type] += node.real_time.total_seconds() * 1000
    print("per type:", ", ".join(f"{k} {v:.1f} ms" for k, v in sorted(per_type.items(), key=lambda kv: -kv[1])[:10]))


if __name__ == "__main__":
    main()
