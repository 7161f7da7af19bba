"""Does ``vitmsn bench``'s default (adaptive) plan agree with ``--thorough``? One table from two JSON reports.

    vitmsn bench ARTIFACTS --json default.json
    vitmsn bench ARTIFACTS --thorough --json thorough.json
    python benchmarks/bench_agreement.py default.json thorough.json > agreement.md

For each row (mode, backend and variant, precision, batch) both runs measured: the ratio to PyTorch eager in
each run with its 95 % interval, from the medians' intervals the reports carry (``latency_ms.median_ci95``):
ratio = eager median / row median, interval = [eager low / row high, eager high / row low]. The plans agree on a
row when the two intervals overlap, i.e. the difference lies within the spread both runs report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def ratios(report: dict) -> dict[tuple, tuple[float, float, float]]:
    rows = report["results"]
    eager = {(r["mode"], r["batch_size"]): r["latency_ms"] for r in rows if r["backend"] == "pytorch-eager"}
    out = {}
    for r in rows:
        base, lat = eager[(r["mode"], r["batch_size"])], r["latency_ms"]
        name = r["backend"] + (f" [{r['variant']}]" if r.get("variant") else "")
        name += f" x{r['sessions']} sessions" if r.get("sessions", 1) > 1 else ""
        key = (r["mode"], name, r["precision"], r["batch_size"])
        out[key] = (base["median"] / lat["median"], base["median_ci95"][0] / lat["median_ci95"][1],
                    base["median_ci95"][1] / lat["median_ci95"][0])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("default", type=Path)
    p.add_argument("thorough", type=Path)
    args = p.parse_args()
    a, b = ratios(json.loads(args.default.read_text())), ratios(json.loads(args.thorough.read_text()))
    print("| mode | backend | precision | batch | default x eager [95% CI] | thorough x eager [95% CI] | agree |")
    print("|---|---|---|---:|---:|---:|---|")
    agree = 0
    shared = [k for k in a if k in b and not k[1].startswith("pytorch-eager")]
    for k in shared:
        (ra, la, ha), (rb, lb, hb) = a[k], b[k]
        ok = la <= hb and lb <= ha
        agree += ok
        print(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {ra:.2f}x [{la:.2f}, {ha:.2f}] | {rb:.2f}x [{lb:.2f}, {hb:.2f}] "
              f"| {'yes' if ok else '**no**'} |")
    print(f"\n{agree} of {len(shared)} rows agree within the spread both runs report.")


if __name__ == "__main__":
    main()
