"""How long does ``vitmsn validate`` take on 500 images at 224x224 with a ViT-S-shaped model?

    python benchmarks/validate_500.py [--images 500] [--int8] [--workdir DIR] [--torch-threads N]

Builds (once, cached in ``--workdir``) a randomly initialised ViT-S-shaped classifier (hidden
384, 12 layers, 6 heads, 1000 labels; transformers ``save_pretrained``), its FP32 export and,
with ``--int8``, a ModelOpt INT8 graph (FP32 high precision, 32 calibration images); writes
``--images`` demo images (200-320 px sources, resized to 224 by the runtime's preprocessing).
Then times :func:`vitmsn.export.validation.validate.validate_artifacts` (PyTorch FP32 reference plus every
ONNX Runtime precision, progress on stderr) and the three report files, and prints the figures.
Random weights make the drift figures meaningless; this measures time only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from vits import vits_checkpoint


def vits_artifacts(workdir: Path, int8: bool) -> Path:
    from vitmsn.export.pipeline import ExportOptions, run_export

    checkpoint, artifacts = workdir / "vits-checkpoint", workdir / "vits-artifacts"
    vits_checkpoint(checkpoint)
    if not (artifacts / "manifest.json").is_file():
        run_export(ExportOptions(model=str(checkpoint), out=artifacts, engine="skip"))
    manifest = json.loads((artifacts / "manifest.json").read_text())
    if int8 and "int8" not in manifest["precisions"]:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from validation_fixtures import add_int8  # the same helper the tests use

        calib = workdir / "calib-images"
        if not calib.is_dir():
            from vitmsn.export.demo import write_dataset

            write_dataset(calib, per_class=4, seed=7, split="train")
        add_int8(artifacts, calib)
    return artifacts


def images(workdir: Path, count: int) -> Path:
    from vitmsn.export.demo import LABELS, write_dataset

    out = workdir / f"images-{count}"
    if not out.is_dir():
        per_class = -(-count // len(LABELS))
        write_dataset(out, per_class=per_class, split="heldout")
        for extra in sorted(out.rglob("*.*"))[count:]:
            extra.unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--int8", action="store_true", help="also export and validate an INT8 graph")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vitmsn-validate-500")
    p.add_argument("--torch-threads", type=int, help="torch.set_num_threads for the PyTorch reference")
    args = p.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    artifacts = vits_artifacts(args.workdir, args.int8)
    folder = images(args.workdir, args.images)

    import torch

    from vitmsn.export.validation.drift_report import write_drift_reports
    from vitmsn.export.validation.validate import validate_artifacts

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    started = time.perf_counter()
    result = validate_artifacts(artifacts, folder, progress=True)
    validated = time.perf_counter() - started
    write_drift_reports(args.workdir / "report", result)
    total = time.perf_counter() - started
    n = len(result.evaluated)
    print(f"validate: {n} images at 224x224, ViT-S shape, PyTorch fp32 reference + "
          f"{', '.join(f'{r.backend} {r.precision}' for r in result.results)}, torch threads {torch.get_num_threads()}")
    print(f"  validation {validated:.1f} s ({n / validated:.1f} images/s through all backends); "
          f"with the three reports {total:.1f} s")
    print(f"  pytorch reference {result.reference['seconds']:.1f} s ({n / result.reference['seconds']:.1f} img/s)")
    for r in result.results:
        print(f"  {r.backend} {r.precision}: {r.seconds:.1f} s ({n / r.seconds:.1f} img/s)")
    print(f"  preprocessing and metrics: {validated - result.reference['seconds'] - sum(r.seconds for r in result.results):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
