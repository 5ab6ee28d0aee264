"""Start-up cost of the shipped .pth in every Python process (target: < 20 ms).

Runs ``python -X importtime -c pass`` repeatedly and sums the self+children import time of
``anomalib_ext`` modules (what the .pth adds), and times ``python -c pass`` with the .pth present
and with it temporarily disabled via ``python -S`` plus an explicit site import of everything else is
not possible cleanly; so we report the import-time share, which is what the plugin adds.

    python tools/bench_startup.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time


def plugin_import_us() -> int:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"],
        capture_output=True,
        text=True,
        check=True,
    )
    total = 0
    for line in result.stderr.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2] in {"anomalib_ext", "anomalib_ext._autoload"}:
            total = max(total, int(parts[1]))  # cumulative of the top-level package import
    return total


def wall_ms(runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    runs = 20
    imports = sorted(plugin_import_us() for _ in range(runs))
    print(f"python -c pass: median wall {wall_ms(runs):.1f} ms over {runs} runs")
    print(
        f"anomalib_ext import at start-up (via .pth): median {statistics.median(imports) / 1000:.2f} ms, "
        f"max {imports[-1] / 1000:.2f} ms",
    )


if __name__ == "__main__":
    main()
