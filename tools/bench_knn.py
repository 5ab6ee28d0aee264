"""Nearest-neighbour search in one memory bank: torch (matmul expansion) vs faiss ``IndexFlatL2``, on CPU.

Decides ``components.memory_bank.FAISS_MIN_QUERIES`` and ``FAISS_MIN_WORK``: when a single bank is
searched by faiss in eager mode. Random features of the lite2 embedding's width (168); the median of
``--repeats`` runs after a warm-up, each search on this process's threads.

    python tools/bench_knn.py --banks 200 1000 2000 12000 50000 --queries 64 1024 4096 8192 \
        --out docs/results/house/knn_torch_vs_faiss.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--banks", type=int, nargs="+", default=[2000, 12000, 50000], help="features per bank")
    parser.add_argument("--queries", type=int, nargs="+", default=[1024, 4096, 8192], help="queries per search")
    parser.add_argument("--dim", type=int, default=168)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import faiss
    import torch

    from anomalib_ext.components.memory_bank import FAISS_MIN_QUERIES, FAISS_MIN_WORK, MemoryBank

    def median_ms(fn: object) -> float:
        fn()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    torch.manual_seed(0)
    rows = []
    for size in args.banks:
        bank = MemoryBank(use_faiss=False)
        bank.fit(torch.randn(size, args.dim), sampling_ratio=None)
        index = faiss.IndexFlatL2(args.dim)
        index.add(bank.bank[0].numpy())
        for count in args.queries:
            queries = torch.randn(1, count, args.dim)
            row = {
                "bank": size,
                "queries": count,
                "work": size * count,
                "torch_ms": median_ms(lambda q=queries, b=bank: b.nearest(q)),
                "faiss_ms": median_ms(lambda q=queries, i=index: i.search(q[0].numpy(), 1)),
            }
            row["faiss_speedup"] = row["torch_ms"] / row["faiss_ms"]
            row["faiss_used_by_default"] = count >= FAISS_MIN_QUERIES and row["work"] >= FAISS_MIN_WORK
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "threads": torch.get_num_threads(),
        "dim": args.dim,
        "faiss_min_queries": FAISS_MIN_QUERIES,
        "faiss_min_work": FAISS_MIN_WORK,
        "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
