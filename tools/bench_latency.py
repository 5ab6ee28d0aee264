"""Latency at batch 1 on CPU: torch eager vs OpenVINO for AMFS (alignment included) and Patchcore.

Trains each model on SyntheticGPD ``p001`` at ``--size``, exports it to OpenVINO, and times on test
images: host alignment (AMFS), torch eager forward (pre-processor -> model -> post-processor), and
the OpenVINO IR (``CPU`` device), each the median of ``--repeats`` runs after 3 warm-ups. For AMFS it
also times the embedding alone (pyramid split + backbone over every block), the floor under any
memory-bank scoring. Peak RSS of the process is reported at the end.

    python tools/bench_latency.py --size 512 --out results/latency
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from anomalib_ext.deploy.timing import median_ms


def load_resized(path: Path, size: tuple[int, int]) -> torch.Tensor:
    from anomalib_ext.data.mvtec_like import read_rgb

    image = torch.from_numpy(read_rgb(path)).permute(2, 0, 1).float()[None] / 255
    return torch.nn.functional.interpolate(image, size=size, mode="bilinear", antialias=True)


class EmbedOnly(torch.nn.Module):
    """AMFS's pyramid split + backbone + pooling only: what any k-NN scoring has to run first."""

    def __init__(self, amfs_model: torch.nn.Module) -> None:
        super().__init__()
        self.amfs_model = amfs_model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.amfs_model.embed(images)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("results/latency"))
    parser.add_argument("--models", nargs="+", default=["amfs", "patchcore"])
    parser.add_argument("--int8-embedding", action="store_true", help="also time the AMFS embedding quantised to INT8 by NNCF")
    args = parser.parse_args()

    import openvino as ov
    from anomalib.deploy import ExportType
    from anomalib.engine import Engine
    from anomalib.models import Patchcore

    from anomalib_ext import register
    from anomalib_ext.components import use_fast_coreset
    from anomalib_ext.data import SyntheticGPD
    from anomalib_ext.models import AMFS

    register()
    use_fast_coreset()
    size = (args.size, args.size)
    results = {"threads": torch.get_num_threads(), "size": args.size}
    for name in args.models:
        if name == "amfs":
            model = AMFS(pre_processor=AMFS.configure_pre_processor(size))
        else:
            model = Patchcore(backbone="tf_efficientnet_lite2", layers=["blocks.2", "blocks.4"], coreset_sampling_ratio=0.01,
                              pre_processor=Patchcore.configure_pre_processor(size))
        data = SyntheticGPD(category="p001", num_workers=2, train_batch_size=8, eval_batch_size=8)
        engine = Engine(default_root_dir=args.out / name, logger=False, enable_progress_bar=False)
        start = time.perf_counter()
        engine.fit(model=model, datamodule=data)
        fit_s = time.perf_counter() - start
        onnx_kwargs = {"dynamic_shapes": None} if name == "patchcore" else None
        xml = engine.export(model=model, export_type=ExportType.OPENVINO, export_root=args.out / name, input_size=size, onnx_kwargs=onnx_kwargs)
        compiled = ov.Core().compile_model(str(xml), "CPU")
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")
        path = sorted(Path(data.root, "p001", "test", "letter").glob("*.jpg"))[0]
        image = load_resized(path, size)
        model.eval()
        row = {"fit_s": round(fit_s, 1), "openvino_precision": str(precision)}
        if name == "amfs":
            row["align_ms"] = median_ms(lambda: model.align_images(image), args.repeats)
            aligned, homographies = model.align_images(image)
            with torch.no_grad():
                row["torch_model_ms"] = median_ms(lambda: model(aligned), args.repeats)
                row["torch_end_to_end_ms"] = median_ms(lambda: model.predict_aligned(image), args.repeats)
            array = aligned.numpy()
            row["openvino_ir_ms"] = median_ms(lambda: compiled(array), args.repeats)
            from anomalib_ext.models.amfs.alignment import BatchAligner

            def ov_end_to_end():
                a, h = model.align_images(image)
                out = compiled(a.numpy())
                BatchAligner.warp_back(torch.from_numpy(out["anomaly_map"] if "anomaly_map" in out else list(out.values())[2]), h)

            row["openvino_end_to_end_ms"] = median_ms(ov_end_to_end, args.repeats)
            # The floor: pyramid split + backbone over all blocks (no k-NN, no maps), in torch and OpenVINO.
            embed_only = EmbedOnly(model.model).eval()
            with torch.no_grad():
                row["torch_embedding_only_ms"] = median_ms(lambda: embed_only(aligned), args.repeats)
            embed_ir = ov.Core().compile_model(ov.convert_model(embed_only, example_input=aligned), "CPU")
            row["openvino_embedding_only_ms"] = median_ms(lambda: embed_ir(array), args.repeats)
            if args.int8_embedding:
                # What INT8 would buy on the floor (issue 4 quantises whole models): NNCF post-training
                # quantisation of the embedding, calibrated on 16 aligned training images.
                import nncf

                train = sorted(Path(data.root, "p001", "train", "good").glob("*.jpg"))[:16]
                calibration = [model.align_images(load_resized(p, size))[0].numpy() for p in train]
                quantized = nncf.quantize(ov.convert_model(embed_only, example_input=aligned), nncf.Dataset(calibration),
                                          subset_size=len(calibration))
                int8_ir = ov.Core().compile_model(quantized, "CPU")
                row["openvino_int8_embedding_only_ms"] = median_ms(lambda: int8_ir(array), args.repeats)
                reference = embed_ir(array)[0]
                row["int8_embedding_relative_error"] = float(np.abs(int8_ir(array)[0] - reference).mean() / np.abs(reference).mean())
        else:
            with torch.no_grad():
                row["torch_model_ms"] = median_ms(lambda: model(image), args.repeats)
            array = image.numpy()
            row["openvino_ir_ms"] = median_ms(lambda: compiled(array), args.repeats)
        results[name] = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()}
        print(json.dumps({name: results[name]}), flush=True)
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
