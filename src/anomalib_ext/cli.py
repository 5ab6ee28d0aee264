"""``anomalib-ext`` console script: anomalib's CLI with the plugin registered, plus our subcommands.

``anomalib-ext train --model AMFS --data SyntheticGPD`` is ``anomalib train ...`` with the plugin's
names resolvable, and two differences:

- ``--seed_everything N`` is applied (Lightning's ``seed_everything(N, workers=True)``) before the
  model and data are built, as Lightning's own CLI does; anomalib 2.7's CLI parses the flag and
  never applies it, so two runs of plain ``anomalib train`` with one seed can differ. ``True`` (the
  default) is Lightning's ``seed_everything()`` without a value: ``$PL_GLOBAL_SEED``, else 0, logged;
  ``False`` seeds nothing.
- Errors the user can fix (missing backbone weights, bad data) are printed as their one message,
  exit code 2, instead of a jsonargparse traceback.

``make-gpd``, ``export``, ``quantize`` and ``infer`` are ours (our ``export`` replaces anomalib's:
dynamic batch for every model, and the metadata our inferencer needs).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from anomalib_ext.errors import EXIT_OK, EXIT_USAGE, find_user_error

if TYPE_CHECKING:
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
    "export": (
        _deploy("export"),
        "checkpoint -> OpenVINO IR (FP32, dynamic batch) + metadata.json (replaces anomalib's export)",
    ),
    "quantize": (
        _deploy("quantize"),
        "FP32 export -> INT8 with NNCF, calibrated on normal images; optional accuracy/speed report",
    ),
    "infer": (_deploy("infer"), "run an export on a file/folder/glob in batches; maps, masks, overlays, scores.csv"),
}


def _print_extra_help() -> None:
    print("\nanomalib-ext subcommands (besides anomalib's train/fit/test/predict/export/benchmark/...):")
    for name, (_, text) in SUBCOMMANDS.items():
        print(f"  {name:10s} {text}")


def seeded_cli_class() -> type:
    """Anomalib's ``AnomalibCLI`` that applies ``--seed_everything`` before building model and data."""
    from anomalib.cli.cli import AnomalibCLI

    class SeededAnomalibCLI(AnomalibCLI):
        def before_instantiate_classes(self) -> None:
            super().before_instantiate_classes()
            subcommand_config = self.config.get(str(self.subcommand), self.config)
            seed = subcommand_config.get("seed_everything", False)
            if seed is False or seed is None:
                return
            from lightning.pytorch import seed_everything

            # As LightningCLI: True -> Lightning's default seed (logged "Seed set to N"), an int -> that seed.
            subcommand_config["seed_everything"] = seed_everything(None if seed is True else int(seed), workers=True)

    return SeededAnomalibCLI


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to our subcommands, else register the plugin and hand over to anomalib's CLI."""
    from anomalib_ext.offline import disable_telemetry

    disable_telemetry()
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        return SUBCOMMANDS[args[0]][0](args[1:])

    from anomalib_ext import register

    register()
    from anomalib.loggers import configure_logger

    if args in ([], ["-h"], ["--help"]):
        _print_extra_help()
    configure_logger()
    sys.argv = ["anomalib", *args]  # anomalib's parser and its pipelines' workers read sys.argv
    try:
        seeded_cli_class()()
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        print(f"anomalib-ext: error: {user_error}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
