"""Write a demo image set: ``python -m vitmsn.export.demo.write_images OUT --per-class N [--fewshot]``.

``--fewshot`` writes the classes the demo model never saw (:data:`.shapes.FEWSHOT_LABELS`), the input of the
README's few-shot example; their held-out images: ``--split fewshot-heldout``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .shapes import DEFAULT_HELDOUT_SEED, FEWSHOT_LABELS, LABELS, SPLIT_TAGS, write_dataset



def main(argv: Sequence[str] | None = None) -> None:
    """``python -m vitmsn.export.demo.write_images OUT --per-class N [--fewshot] [--split S] [--seed N]``: write a set."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vitmsn.export.demo.write_images", description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--fewshot", action="store_true",
                        help=f"the classes the demo model never saw ({', '.join(FEWSHOT_LABELS)}) instead of its own")
    parser.add_argument("--split", choices=sorted(SPLIT_TAGS), help="[default: fewshot with --fewshot, else heldout]")
    parser.add_argument("--seed", type=int, default=DEFAULT_HELDOUT_SEED)
    args = parser.parse_args(argv)
    split = args.split or ("fewshot" if args.fewshot else "heldout")
    paths = write_dataset(args.out, args.per_class, args.seed, split, labels=FEWSHOT_LABELS if args.fewshot else LABELS)
    print(f"wrote {len(paths)} images into {args.out}")


if __name__ == "__main__":
    main()
