"""Rows as the console shows them while bench runs, and PyTorch rows that measured noise rather than the model:
an end-to-end time far below the model-only time is impossible (end to end does the model's work and more), so
one of the two caught a burst of load on a shared machine; such a pair is re-measured once, then flagged."""

from __future__ import annotations

from typing import Any, Callable

from .backends import BenchRow

NOISE_FACTOR = 0.8  # a PyTorch end-to-end median below this share of its model-only median is noise


def row_line(r: dict[str, Any]) -> str:
    """One measured row for the console: name, throughput, median with its 95% CI, sample count."""
    from .report import row_name

    lat = r["latency_ms"]
    lo, hi = lat.get("median_ci95") or (float("nan"), float("nan"))
    ci = (hi - lo) / 2 / lat["median"] * 100 if lat["median"] else float("nan")
    return (f"{row_name(r)} {r['precision']} {r['device']} {r['mode']} batch {r['batch_size']}: "
            f"{r['throughput']:.1f} img/s, median {lat['median']:.1f} ms +/-{ci:.1f}% (n={lat['samples']})"
            + (f"  NOISY: {r['noisy']}" if r.get("noisy") else ""))


def _inconsistent(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """PyTorch (model-only, end-to-end) row pairs whose end to end is far faster than the model alone: impossible
    (end to end does the model's work and more), so one of the two caught a burst of load."""
    model = {(r["backend"], r["variant"], r["batch_size"]): r for r in rows
             if r["mode"] == "model" and r["backend"].startswith("pytorch")}
    pairs = []
    for r in rows:
        m = model.get((r["backend"], r["variant"], r["batch_size"]))
        if r["mode"] == "e2e" and m is not None and r["latency_ms"]["median"] < NOISE_FACTOR * m["latency_ms"]["median"]:
            pairs.append((m, r))
    return pairs


def recheck_pytorch(rows: list[dict[str, Any]], backends: list[BenchRow],
                    time_group: Callable[[list[BenchRow], str, int], list[dict[str, Any]]],
                    say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Re-measure each inconsistent PyTorch pair (:func:`_inconsistent`) once, both modes; a pair still
    inconsistent is flagged ``noisy`` (the report prints it as such, never as a plain result)."""
    for model_row, e2e_row in _inconsistent(rows):
        backend = next(b for b in backends if b.backend == model_row["backend"] and b.variant == model_row["variant"])
        batch = model_row["batch_size"]
        say(f"re-measuring {backend.label} batch {batch}: end to end {e2e_row['latency_ms']['median']:.1f} ms was "
            f"below model only {model_row['latency_ms']['median']:.1f} ms (noise)")
        again = time_group([backend], "model", batch) + time_group([backend], "e2e", batch)
        if len(again) == 2:
            rows = [again[0] if r is model_row else again[1] if r is e2e_row else r for r in rows]
    for model_row, e2e_row in _inconsistent(rows):
        why = (f"end to end {e2e_row['latency_ms']['median']:.1f} ms below model only "
               f"{model_row['latency_ms']['median']:.1f} ms after a re-measure: the machine was busy; re-run")
        model_row["noisy"] = e2e_row["noisy"] = why
        say(f"  NOISY: {row_line(model_row)}")
    return rows
