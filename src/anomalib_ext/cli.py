"""``anomalib-ext`` console script: anomalib's CLI with the plugin registered, plus our subcommands.

``anomalib-ext train --model AMFS --data SyntheticGPD`` is exactly ``anomalib train ...`` with the
plugin's names resolvable; ``make-gpd``, ``export``, ``quantize`` and ``infer`` are ours (our ``export``
replaces anomalib's: dynamic batch for every model, and the metadata our inferencer needs).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def _make_gpd(argv: Sequence[str]) -> int:
    from anomalib_ext.data.synthetic_gpd import main as make_gpd_main

    return make_gpd_main(argv)


def _deploy(name: str) -> Callable[[Sequence[str]], int]:
    def run(argv: Sequence[str]) -> int:
        from anomalib_ext.deploy import commands

        return getattr(commands, f"{name}_main")(argv)

    return run


SUBCOMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "make-gpd": (_make_gpd, "generate the printed-garment (SyntheticGPD) dataset into a folder"),
    "export": (_deploy("export"), "checkpoint -> OpenVINO IR (FP32, dynamic batch) + metadata.json (replaces anomalib's export)"),
    "quantize": (_deploy("quantize"), "FP32 export -> INT8 with NNCF, calibrated on normal images; optional accuracy/speed report"),
    "infer": (_deploy("infer"), "run an export on a file/folder/glob in batches; maps, masks, overlays, scores.csv"),
}


def _print_extra_help() -> None:
    print("\nanomalib-ext subcommands (besides anomalib's train/fit/test/predict/export/benchmark/...):")
    for name, (_, text) in SUBCOMMANDS.items():
        print(f"  {name:10s} {text}")


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to our subcommands, else register the plugin and hand over to anomalib's CLI."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        return SUBCOMMANDS[args[0]][0](args[1:])

    from anomalib_ext import register

    register()
    from anomalib.cli.cli import main as anomalib_main

    if args in ([], ["-h"], ["--help"]):
        _print_extra_help()
    sys.argv = ["anomalib", *args]  # anomalib's parser reads sys.argv
    anomalib_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
