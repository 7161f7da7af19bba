"""What a user needs to trust a few-shot head, as the manifest's ``fewshot`` block and in the reports: shots per
class, the chosen C, the cross-validated accuracy with its one-sided 95 % Wilson lower bound and n, per-class
accuracy, the confusion matrix (a plot in report.html), the time to embed and to fit."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vitmsn.export.validation.stats import wilson
from vitmsn.fewshot import FewshotHead

if TYPE_CHECKING:
    from .embed import EmbeddedShots


def fewshot_block(head: FewshotHead, found: EmbeddedShots, source: str, checkpoint: str) -> dict[str, Any]:
    """The manifest's ``fewshot`` block (JSON)."""
    block: dict[str, Any] = {
        "source": source,
        "checkpoint": checkpoint,
        "classes": [head.id2label[i] for i in sorted(head.id2label)],
        "shots_per_class": head.shots,
        "shots": int(sum(head.shots.values())),
        "C": head.C,
        "C_choice": head.c_choice,
        "protocol": "centre + one RMS scale (folded into W, b); multinomial L2 logistic regression, intercept, "
                    "class_weight=balanced, lbfgs; C by stratified k-fold log-loss (README: Few-shot classification)",
        "images": {"unreadable_skipped": [str(p) for p, _ in found.unreadable], "duplicates_dropped": len(found.duplicates),
                   "non_images_ignored": found.ignored, "near_duplicates_in_one_fold": head.near_duplicates},
        "warnings": found.warnings + head.notes,
        "embed_seconds": round(found.seconds, 2),
        "fit_seconds": round(head.fit_seconds, 2),
        "cross_validation": None,
    }
    if head.cv is not None:
        bound = wilson(head.cv.correct, head.cv.n)
        block["cross_validation"] = {
            "folds": head.cv.folds, "accuracy": round(head.cv.accuracy, 6), "correct": head.cv.correct, "n": head.cv.n,
            "accuracy_lower_bound": round(bound.lower, 6), "confidence": bound.confidence,
            "bound": "one-sided Wilson lower bound (optimistic: the same folds chose C)",
            "per_class_accuracy": {k: round(v, 6) for k, v in head.cv.per_class_accuracy.items()},
            "confusion": head.cv.confusion,
            "log_loss_by_C": {f"{c:g}": v for c, v in head.cv.log_loss.items()},
        }
    return block


def fewshot_markdown(block: dict[str, Any]) -> list[str]:
    """report.md's few-shot section."""
    shots = ", ".join(f"{k} {v}" for k, v in block["shots_per_class"].items())
    lines = ["## Few-shot head", "", f"- {block['shots']} shots from {block['source']}: {shots}",
             f"- {block['C_choice']}", f"- embedding {block['embed_seconds']}s, fit {block['fit_seconds']}s; "
             f"checkpoint: {block['checkpoint']}/"]
    cv = block.get("cross_validation")
    if cv:
        lines.append(f"- cross-validated accuracy {cv['accuracy']:.4f} ({cv['correct']}/{cv['n']}), 95 % lower bound "
                     f"{cv['accuracy_lower_bound']:.4f} ({cv['bound']})")
        classes = block["classes"]
        lines += ["", "| true \\ predicted | " + " | ".join(classes) + " | accuracy |",
                  "|---|" + "---:|" * (len(classes) + 1)]
        for name, row in zip(classes, cv["confusion"]):
            lines.append(f"| {name} | " + " | ".join(map(str, row)) + f" | {cv['per_class_accuracy'][name]:.3f} |")
    lines += [f"- warning: {w}" for w in block.get("warnings") or []]
    return lines
