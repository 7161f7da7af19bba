"""Does the export's verdict agree with a later ``vitmsn validate`` on fresh images? (README's demo flow)

For each calibration seed: the README's INT8 recipe (``write_dataset('calib', per_class=48,
split='train')``: 384 images, 128 calibrate and 256 are held out to gate), then ``vitmsn validate``
on 200 and on 1,000 fresh held-out-split images (other seeds: no overlap with calibration). The
table lists each verdict with its gates' bounds; "agree" is yes when every precision/flavour the
export judged gets the same word from both validations, or the export said inconclusive.

    python benchmarks/verdict_agreement.py --seeds 0 1 2 3 4 --out benchmarks/verdict-agreement.md

Writes the markdown table and a JSON file beside it. Takes about 5 minutes per seed on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent


def run(*args: str) -> int:
    return subprocess.run([str(BIN / args[0]), *args[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def verdicts(artifacts: Path, by: str) -> dict[str, dict]:
    data = json.loads((artifacts / "manifest.json").read_text())
    return {f"{v['precision']}{'/' + v['flavour'] if v['flavour'] else ''}": v for v in data.get("verdicts", [])
            if v["by"] == by and v["backend"] == "onnxruntime"}


def bounds(v: dict) -> str:
    short = {"top1_agreement": "top1", "cosine_p5": "cos p5", "accuracy_drop": "drop"}
    return ", ".join(f"{short.get(g['metric'], g['metric'])} {g['bound']:.4f}" if g["bound"] is not None else
                     f"{short.get(g['metric'], g['metric'])} -" for g in v["gates"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/verdict-agreement.md"))
    args = ap.parse_args()
    from vitmsn.export.demo import write_dataset

    rows, raw = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_dataset(work / "calib", per_class=48, split="train")
        write_dataset(work / "val200", per_class=25)  # README: write_dataset('val', per_class=25)
        write_dataset(work / "val1000", per_class=125, seed=7)
        for seed in args.seeds:
            art = work / f"art{seed}"
            code = run("vitmsn-export", "--model", "demo", "--precision", "fp16", "--precision", "int8",
                       "--calib-images", str(work / "calib"), "--calib-seed", str(seed), "--engine", "skip",
                       "--out", str(art))
            export = verdicts(art, "export")
            runs = {}
            for name in ("val200", "val1000"):
                rc = run("vitmsn", "validate", str(art), "--images", str(work / name), "--backend", "onnxruntime",
                         "--precision", "fp16", "--precision", "int8", "--quiet")  # what the export judged
                runs[name] = (rc, verdicts(art, "validate"))
            for key, v in export.items():
                later = [runs[n][1].get(key, {}).get("verdict", "-") for n in ("val200", "val1000")]
                agree = v["verdict"] == "inconclusive" or all(w == v["verdict"] for w in later)
                rows.append(f"| {seed} | {key} | {v['verdict']} (n={v['images']['count']}; {bounds(v)}) | "
                            f"{later[0]} ({bounds(runs['val200'][1][key]) if key in runs['val200'][1] else '-'}) | "
                            f"{later[1]} ({bounds(runs['val1000'][1][key]) if key in runs['val1000'][1] else '-'}) | "
                            f"{'yes' if agree else '**no**'} |")
                raw.append({"seed": seed, "graph": key, "export_exit": code, "export": v,
                            "validate_200": runs["val200"][1].get(key), "validate_1000": runs["val1000"][1].get(key),
                            "agree": agree})
            print(f"seed {seed}: export exit {code}, validate exits {runs['val200'][0]}, {runs['val1000'][0]}", flush=True)
            write(args.out, rows, raw)  # after every seed: a long run interrupted still leaves its table
    print(args.out.read_text())


def write(out: Path, rows: list[str], raw: list[dict]) -> None:
    table = ["| seed | graph | export verdict (held-out n; 95% bounds) | validate, 200 fresh | validate, 1,000 fresh | agree |",
             "|---:|---|---|---|---|---|", *rows]
    out.write_text("\n".join(table) + "\n")
    out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    main()
