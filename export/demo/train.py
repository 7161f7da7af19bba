"""Train the demo ViTMSN on procedural shapes and save it in Hugging Face format.

    python -m vitmsn.export.demo.train --out export/demo/checkpoint

Data (:mod:`.pool`): a pool of training images rendered by :mod:`vitmsn.export.demo.shapes` (split ``train``),
a fraction of them JPEG-encoded and decoded so training sees the compression artefacts the
held-out files have, decoded and resized by :class:`vitmsn.runtime.images.preprocess.PreprocessConfig`
(the runtime's one implementation) built from the very preprocessor_config.json that is saved.
Augmentation: random horizontal flips.

Progressive resolution: a ViT trained from scratch on 196 tokens learns slowly, and on two CPU
cores 224 px steps are expensive. Most steps therefore run on area-downsampled pixels (64 px:
4x4 patches, then 112 px: 7x7) with the 14x14 position-embedding grid area-pooled to match
(:func:`logits_at`); the last stage trains the unchanged model at 224 px. Each stage has its own
warm-up and cosine decay; AdamW, gradient clipping, everything seeded.

The checkpoint is then reloaded with :func:`vitmsn.export.fp32.checkpoint.load_checkpoint` and
scored on held-out files written by ``write_dataset(split="heldout")`` and read back through
the same preprocessing; ``training_report.json`` records the result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vitmsn.export.fp32.model import ViTMSNArch, ViTMSNClassifier
from vitmsn.runtime.images.preprocess import DEFAULT_PREPROCESSOR_CONFIG, PreprocessConfig

from . import CHECKPOINT_DIR
from .pool import augment, normalized, render_pool
from .shapes import DEFAULT_HELDOUT_SEED, LABELS, write_dataset

PREPROCESSOR_CONFIG: dict[str, Any] = {  # ViTImageProcessor's defaults with ImageNet's mean and std
    "image_processor_type": "ViTImageProcessor", **DEFAULT_PREPROCESSOR_CONFIG,
    "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
DEFAULT_TRAIN_SEED = 1234


# ---- what gets saved ------------------------------------------------------------------------
def hf_config(arch: ViTMSNArch, labels: Sequence[str]) -> dict[str, Any]:
    """config.json for ``ViTMSNForImageClassification`` (every ViTMSNConfig field)."""
    return {
        "architectures": ["ViTMSNForImageClassification"],
        "model_type": "vit_msn",
        **arch.to_dict(),
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
        "torch_dtype": "float32",
    }


def save_checkpoint(model: ViTMSNClassifier, labels: Sequence[str], out: Path) -> Path:
    """config.json, model.safetensors (transformers 4.x key names) and preprocessor_config.json."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    # Our module tree uses the transformers 4.x names verbatim (vit.encoder.layer.N.attention...).
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    weights = out / "model.safetensors"
    save_file(state, str(weights), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(model.arch, labels), indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n")
    return weights


# ---- progressive resolution -----------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """Train at ``resolution`` for ``steps`` steps of ``batch`` images, peak learning rate ``lr``."""

    resolution: int
    steps: int
    batch: int
    lr: float

    @classmethod
    def parse(cls, text: str) -> "Stage":
        try:
            res, steps, batch, lr = text.split(":")
            return cls(int(res), int(steps), int(batch), float(lr))
        except ValueError:
            raise argparse.ArgumentTypeError(f"stage {text!r}: expected RESOLUTION:STEPS:BATCH:LR, e.g. 64:1500:32:1.5e-3") from None


def logits_at(model: ViTMSNClassifier, x: torch.Tensor) -> torch.Tensor:
    """Class logits for pixels at any multiple of the patch size.

    At the model's own image size this is the model's forward. Below it, the 14x14 grid of
    position embeddings is area-pooled to the smaller grid (one parameter, trained at every
    resolution), which is what lets most training steps run on few tokens.
    """
    arch = model.arch
    if x.shape[-1] == arch.image_size:
        return model(x)[0]
    emb = model.vit.embeddings
    side, grid = arch.image_size // arch.patch_size, x.shape[-1] // arch.patch_size
    pos = emb.position_embeddings
    pos_grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    pos_grid = F.adaptive_avg_pool2d(pos_grid, grid).flatten(2).transpose(1, 2)
    tokens = torch.cat((emb.cls_token.expand(x.shape[0], -1, -1) + pos[:, :1],
                        emb.patch_embeddings(x) + pos_grid), dim=1)
    hidden = model.vit.layernorm(model.vit.encoder(tokens))
    return model.classifier(hidden[:, 0])


# ---- evaluation -----------------------------------------------------------------------------
@torch.no_grad()
def logits_for(model: nn.Module, preprocess: PreprocessConfig, images: Sequence[Any], batch: int = 32) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        pixels = torch.from_numpy(preprocess.batch(images[i:i + batch]))
        out.append(model(pixels)[0].numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def score(logits: np.ndarray, targets: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    pred = logits.argmax(1)
    top2 = np.sort(logits, axis=1)[:, -2:]
    margins = top2[:, 1] - top2[:, 0]
    per_class = {name: float((pred[targets == k] == k).mean()) for k, name in enumerate(labels) if (targets == k).any()}
    return {
        "accuracy": float((pred == targets).mean()),
        "per_class_accuracy": per_class,
        "logit_margin": {"min": float(margins.min()), "p01": float(np.percentile(margins, 1)),
                         "median": float(np.median(margins))},
        "errors": int((pred != targets).sum()),
    }


def evaluate_heldout(checkpoint_dir: Path, per_class: int, seed: int) -> dict[str, Any]:
    """Reload the saved checkpoint and score it on freshly written held-out files."""
    from vitmsn.export.fp32.checkpoint import load_checkpoint

    ckpt = load_checkpoint(str(checkpoint_dir))
    labels = [ckpt.labels[i] for i in range(len(ckpt.labels))]
    model = ckpt.build_model()
    with tempfile.TemporaryDirectory(prefix="vitmsn-heldout-") as tmp:
        paths = write_dataset(tmp, per_class=per_class, seed=seed, split="heldout", labels=labels)
        targets = np.array([labels.index(p.parent.name) for p in paths])
        logits = logits_for(model, ckpt.preprocess, paths)
    result = score(logits, targets, labels)
    result.update(images=len(paths), per_class_images=per_class, seed=seed, split="heldout",
                  formats=["jpg", "png"])
    return result


# ---- training -------------------------------------------------------------------------------
def _init_weights(model: ViTMSNClassifier) -> None:
    """transformers' ViT initialisation: truncated normal (std 0.02) weights, zero biases."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.trunc_normal_(model.vit.embeddings.position_embeddings, std=0.02)
    nn.init.trunc_normal_(model.vit.embeddings.cls_token, std=0.02)


def _lr_at(step: int, total: int, peak: float) -> float:
    """Linear warm-up over the first 5% (at least 10 steps), then cosine decay to 1% of peak."""
    warmup = max(10, total // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def _log(msg: str) -> None:
    print(msg, flush=True)


@torch.no_grad()
def _monitor(model: ViTMSNClassifier, pool: np.ndarray, targets: np.ndarray, preprocess: PreprocessConfig,
             labels: Sequence[str]) -> dict[str, Any]:
    model.eval()
    logits = [model(normalized(pool, np.arange(i, min(i + 50, len(pool))), preprocess))[0].numpy()
              for i in range(0, len(pool), 50)]
    model.train()
    return score(np.concatenate(logits), targets, labels)


def train(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    labels = list(LABELS)
    arch = ViTMSNArch(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      intermediate_size=args.mlp, hidden_act="gelu", layer_norm_eps=1e-6,
                      image_size=224, patch_size=16, num_channels=3, qkv_bias=True)
    stages: list[Stage] = args.stages
    bad = [st for st in stages if st.resolution % arch.patch_size or st.resolution > arch.image_size]
    if bad or stages[-1].resolution != arch.image_size:
        raise SystemExit(f"--stages: resolutions must be multiples of {arch.patch_size} up to {arch.image_size}, "
                         f"and the last stage must train at {arch.image_size}")
    preprocess = PreprocessConfig.from_preprocessor_config(PREPROCESSOR_CONFIG)
    model = ViTMSNClassifier(arch, len(labels), attention="sdpa")
    _init_weights(model)
    params = sum(p.numel() for p in model.parameters())
    _log(f"arch: {arch.to_dict()}; {params / 1e6:.2f}M parameters ({params * 4 / 1e6:.1f} MB fp32); "
         f"{args.threads} threads")

    t0 = time.perf_counter()
    pool, targets = render_pool(args.pool, args.seed, args.jpeg_fraction, preprocess, labels, args.workers)
    monitor_pool, monitor_targets = render_pool(args.monitor, args.seed + 1, args.jpeg_fraction, preprocess, labels)
    _log(f"rendered {len(pool)} training + {len(monitor_pool)} monitor images in {time.perf_counter() - t0:.1f}s")

    decayed = {n for n, p in model.named_parameters() if p.ndim >= 2 and n not in (
        "vit.embeddings.position_embeddings", "vit.embeddings.cls_token")}
    opt = torch.optim.AdamW(
        [{"params": [p for n, p in model.named_parameters() if n in decayed], "weight_decay": args.weight_decay},
         {"params": [p for n, p in model.named_parameters() if n not in decayed], "weight_decay": 0.0}],
        lr=stages[0].lr, betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(args.seed)
    order_rng = np.random.default_rng([args.seed, 2])
    order, cursor = order_rng.permutation(len(pool)), 0
    total = sum(st.steps for st in stages)
    _log("stages: " + ", ".join(f"{st.steps} steps of {st.batch} at {st.resolution}px (lr {st.lr:g})" for st in stages))

    model.train()
    t_train = time.perf_counter()
    step, seen, history = 0, 0, []
    for number, st in enumerate(stages, 1):
        t_stage, run_loss, run_correct, run_n = time.perf_counter(), 0.0, 0, 0
        for k in range(st.steps):
            if cursor + st.batch > len(order):
                order, cursor = order_rng.permutation(len(pool)), 0
            idx = order[cursor:cursor + st.batch]
            cursor += st.batch
            x = augment(normalized(pool, idx, preprocess), gen)
            if st.resolution != arch.image_size:
                x = F.adaptive_avg_pool2d(x, st.resolution)  # area downsampling of the preprocessed pixels
            y = torch.from_numpy(targets[idx])
            lr = _lr_at(k, st.steps, st.lr)
            for group in opt.param_groups:
                group["lr"] = lr
            logits = logits_at(model, x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            seen += len(idx)
            run_loss += float(loss.detach()) * len(idx)
            run_correct += int((logits.argmax(1) == y).sum())
            run_n += len(idx)
            if (k + 1) % args.log_every == 0 or k + 1 == st.steps:
                elapsed = time.perf_counter() - t_stage
                line = (f"stage {number}/{len(stages)} ({st.resolution}px) step {k + 1}/{st.steps} "
                        f"loss {run_loss / run_n:.4f} train-acc {run_correct / run_n:.3f} lr {lr:.2e} "
                        f"{(k + 1) * st.batch / elapsed:.1f} img/s, {time.perf_counter() - t_train:.0f}s elapsed")
                final = number == len(stages)
                if len(monitor_pool) and (k + 1 == st.steps or (final and (k + 1) % (args.log_every * 4) == 0)):
                    m = _monitor(model, monitor_pool, monitor_targets, preprocess, labels)
                    line += f", monitor@224 {m['accuracy']:.3f} (median margin {m['logit_margin']['median']:.2f})"
                    history.append({"step": step, "resolution": st.resolution, "monitor_accuracy": m["accuracy"]})
                _log(line)
                run_loss, run_correct, run_n = 0.0, 0, 0
    train_seconds = time.perf_counter() - t_train

    out = Path(args.out)
    model.eval()
    weights = save_checkpoint(model, labels, out)
    t_eval = time.perf_counter()
    heldout = evaluate_heldout(out, args.heldout_per_class, args.heldout_seed)
    _log(f"held-out accuracy {heldout['accuracy']:.4f} on {heldout['images']} images "
         f"({heldout['errors']} errors), min logit margin {heldout['logit_margin']['min']:.2f}, "
         f"in {time.perf_counter() - t_eval:.0f}s")
    report = {
        "heldout": heldout,
        "heldout_accuracy": heldout["accuracy"],
        "per_class_accuracy": heldout["per_class_accuracy"],
        "seeds": {"train": args.seed, "heldout": args.heldout_seed, "monitor": args.seed + 1},
        "steps": total,
        "stages": [asdict(st) for st in stages],
        "images_seen": seen,
        "training_images": len(pool),
        "jpeg_fraction": args.jpeg_fraction,
        "optimizer": {"name": "AdamW", "betas": [0.9, 0.999], "weight_decay": args.weight_decay,
                      "schedule": "per stage: linear warm-up 5%, cosine to 1% of peak", "grad_clip": 1.0},
        "augmentation": ["horizontal flip"],
        "monitor": history,
        "arch": arch.to_dict(),
        "parameters": params,
        "threads": args.threads,
        "wall_seconds": {"total": round(time.perf_counter() - t0, 1), "training": round(train_seconds, 1)},
        "model_safetensors_bytes": weights.stat().st_size,
        "model_safetensors_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "pillow": Image.__version__},
        "command": "python -m vitmsn.export.demo.train " + shlex.join(args.argv),
    }
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    _log(f"wrote {out} (model.safetensors {report['model_safetensors_bytes'] / 1e6:.2f} MB) "
         f"in {report['wall_seconds']['total']:.0f}s")
    return report


DEFAULT_STAGES = "64:2500:32:1.5e-3,112:300:32:7e-4,224:200:32:4e-4"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vitmsn.export.demo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(CHECKPOINT_DIR), help="checkpoint directory to write (default: %(default)s)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp", type=int, default=512)
    p.add_argument("--stages", type=lambda t: [Stage.parse(x) for x in t.split(",")], default=DEFAULT_STAGES,
                   help="comma-separated RESOLUTION:STEPS:BATCH:LR, trained in order; the last at 224 "
                        "(default: %(default)s)")
    p.add_argument("--pool", type=int, default=8000, help="training images rendered (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--jpeg-fraction", type=float, default=0.5)
    p.add_argument("--monitor", type=int, default=200, help="training-split images scored at 224 during training")
    p.add_argument("--heldout-per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=DEFAULT_TRAIN_SEED)
    p.add_argument("--heldout-seed", type=int, default=DEFAULT_HELDOUT_SEED)
    # One thread by default: on two cores shared with other jobs, two OpenMP threads spin-wait on
    # each other and measured 4x slower than one (224 px steps, load ~2 from other processes).
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="processes rendering the training pool (default: %(default)s)")
    p.add_argument("--log-every", type=int, default=25)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    report = train(parse_args(argv))
    return 0 if report["heldout_accuracy"] >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
