"""``creward train fit``: train the reward head on labelled pairs (Bradley-Terry), backbone frozen.

Usage::

    creward train fit PAIRS_DIR... --labels LABELS... --backbone NAME --backbone-weights P -o HEAD.safetensors
        [--cache DIR] [--epochs 20] [--seed 0] [--lr 1e-4] [--weight-decay 1e-4] [--train-batch-size 64]
        [--patience 5] [--val-fraction 0.1 | --split crebench|TRAIN,VAL[,TEST]] [--label-encoding auto]

Loss, per pair and axis c with label y = +1 (image _0 more creative) or -1 (image _1)::

    -log σ(y · (f_c(image_0) - f_c(image_1)))     (= softplus(-y·Δ))

ties (y = 0) masked out; the batch loss is the mean over every decisive (pair, axis) entry.
The paper published no optimiser settings; ours: AdamW, lr 1e-4, weight decay 1e-4, batch 64
pairs, 20 epochs, early stopping after 5 epochs without a lower validation loss, and the head of
the best validation epoch is kept. Training reads features from the cache (``creward train
features``; missing ones are computed first) and never runs the backbone itself. The same seed
gives the same split, initialisation, shuffling and dropout: an identical head on the same device
(bitwise on CPU).

Validation: ``--val-fraction F`` holds out a seeded random F of the pairs (default 0.1);
``--split crebench`` (= ``800,100,100``) splits every folder in file order as CreBench does:
first 800 pairs train, next 100 validate, last 100 are the test set (left out; evaluate them with
``creward train eval ... --split crebench --part test``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..cli.arguments import check_device, fraction_below_one, non_negative_float, non_negative_int, positive_float, positive_int
from ..models.axes import AXES
from ..models.errors import CREwardError

if TYPE_CHECKING:  # torch is imported where it is used: `creward train fit --help` stays fast
    import torch
    from torch import nn

logger = logging.getLogger(__name__)


class FitError(CREwardError):
    """Training cannot run on this data (e.g. an axis without a single decisive pair)."""


@dataclass
class FitConfig:
    """Optimiser and schedule of head training (defaults are CREward's choice; see the module doc)."""

    epochs: int = 20
    lr: float = 1e-4
    weight_decay: float = 1e-4
    batch_size: int = 64  # pairs per step
    patience: int | None = 5  # epochs without a lower val loss before stopping; None/0: never
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        if self.epochs <= 0:
            raise ValueError(f"epochs should be positive, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr should be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay should be >= 0, got {self.weight_decay}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size should be positive, got {self.batch_size}")
        if self.patience is not None and self.patience < 0:
            raise ValueError(f"patience should be >= 0, got {self.patience}")

    def optimizer_settings(self) -> dict:
        return {
            "optimizer": "AdamW",
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "betas": [0.9, 0.999],
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "patience": self.patience,
            "seed": self.seed,
            "loss": "-log sigmoid(y*(f(A)-f(B))), ties masked, mean over decisive (pair, axis) entries",
        }


@dataclass
class PairFeatures:
    """Cached features of both images of each pair, with +1/-1/0 labels ``[N, axes]``."""

    features_0: torch.Tensor
    features_1: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if not (len(self.features_0) == len(self.features_1) == len(self.labels)):
            raise ValueError(f"pair features and labels differ in length: {len(self.features_0)}, {len(self.features_1)}, {len(self.labels)}")
        if self.features_0.shape != self.features_1.shape or self.features_0.ndim != 2:
            raise ValueError(f"pair features should both be [N, D], got {tuple(self.features_0.shape)} and {tuple(self.features_1.shape)}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def feature_dim(self) -> int:
        return int(self.features_0.shape[1])

    def decisive_counts(self) -> list[int]:
        return [int(count) for count in (self.labels != 0).sum(dim=0)]

    @classmethod
    def from_pair_set(cls, pair_set, cache) -> "PairFeatures":
        import torch

        return cls(cache.features_for(pair_set.image_0), cache.features_for(pair_set.image_1), torch.from_numpy(pair_set.labels.copy()))


def pairwise_losses(scores_0: torch.Tensor, scores_1: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-entry ``-log σ(y·(s0 - s1))`` ``[N, axes]`` and the decisive mask (``y != 0``)."""
    from torch.nn import functional as F

    signs = labels.to(scores_0.dtype)
    return F.softplus(-(scores_0 - scores_1) * signs), labels != 0


def score_pairs(head: nn.Module, data: PairFeatures, batch_size: int = 1024, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Head scores of both images of every pair (eval mode, no gradients), on the CPU."""
    import torch

    was_training = head.training
    head.eval()
    scores_0, scores_1 = [], []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            scores_0.append(head(data.features_0[start:start + batch_size].to(device)).float().cpu())
            scores_1.append(head(data.features_1[start:start + batch_size].to(device)).float().cpu())
    head.train(was_training)
    if not scores_0:
        width = head[-1].out_features
        return torch.zeros(0, width), torch.zeros(0, width)
    return torch.cat(scores_0), torch.cat(scores_1)


def pair_metrics(scores_0: torch.Tensor, scores_1: torch.Tensor, labels: torch.Tensor, axes: Sequence[str] = AXES) -> dict:
    """Loss and pairwise accuracy per axis on decisive pairs (None where an axis has none)."""
    losses, mask = pairwise_losses(scores_0, scores_1, labels)
    correct = ((scores_0 - scores_1) * labels.to(scores_0.dtype) > 0) & mask
    decisive = mask.sum(dim=0)
    per_axis_loss, accuracy = {}, {}
    for column, axis in enumerate(axes):
        count = int(decisive[column])
        per_axis_loss[axis] = float(losses[:, column][mask[:, column]].mean()) if count else None
        accuracy[axis] = float(correct[:, column].sum()) / count if count else None
    total = int(mask.sum())
    return {
        "loss": float(losses[mask].mean()) if total else None,
        "loss_per_axis": per_axis_loss,
        "accuracy": accuracy,
        "decisive": {axis: int(decisive[column]) for column, axis in enumerate(axes)},
        "pairs": int(len(labels)),
    }


@dataclass
class FitResult:
    head: nn.Sequential  # the best epoch's head, eval mode, on the CPU
    history: list[dict]
    best_epoch: int
    best: dict  # validation metrics of the best epoch (train metrics when there is no validation)
    stopped_early: bool
    config: FitConfig
    seconds: float = 0.0


def check_trainable(counts: dict[str, int], where: str, axes: Sequence[str] = AXES) -> None:
    """Raise :class:`FitError` when an axis has no decisive training pair."""
    empty = [axis for axis in axes if counts.get(axis, 0) == 0]
    if empty:
        raise FitError(
            f"axis {', '.join(empty)} has no decisive training pair (every label is a tie) in {where}: the head cannot "
            f"learn {'it' if len(empty) == 1 else 'them'}; add pairs with an A/B decision on {'that axis' if len(empty) == 1 else 'those axes'}"
        )


def fit_head(
    train: PairFeatures,
    val: PairFeatures | None,
    config: FitConfig = FitConfig(),
    axes: Sequence[str] = AXES,
    progress: bool = True,
) -> FitResult:
    """Train a fresh ``build_head(D)`` on cached pair features; returns the best-validation head.

    Raises :class:`FitError` if an axis has no decisive training pair. Axes without decisive
    validation pairs get ``None`` metrics (a warning says so); with no decisive validation entry
    at all, the last epoch is kept.
    """
    import torch
    from tqdm.auto import tqdm

    from ..models.head import build_head

    started = time.perf_counter()
    check_trainable(dict(zip(axes, train.decisive_counts())), "the training pairs", axes)
    if val is not None and len(val) == 0:
        val = None
    if val is not None:
        for axis, count in zip(axes, val.decisive_counts()):
            if count == 0:
                logger.warning("axis %s has no decisive validation pair: no validation loss/accuracy for it", axis)
        if sum(val.decisive_counts()) == 0:
            logger.warning("the validation pairs hold no decision at all: keeping the last epoch")
            val = None
    if val is None:
        logger.warning("training without validation: no early stopping, the last epoch is kept")
    device = torch.device(config.device)
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)
        head = build_head(train.feature_dim, len(axes)).to(device)
        head.train()
        optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        shuffle = torch.Generator().manual_seed(config.seed)
        features_0, features_1 = train.features_0.float().to(device), train.features_1.float().to(device)
        labels = train.labels.to(device)
        history: list[dict] = []
        best_loss, best_epoch, best_state, best_metrics, stale = math.inf, 0, None, {}, 0
        stopped_early = False
        steps = math.ceil(len(train) / config.batch_size)
        with tqdm(total=config.epochs, desc="training head", unit="epoch", file=sys.stderr, disable=None if progress else True) as bar:
            for epoch in range(1, config.epochs + 1):
                head.train()
                order = torch.randperm(len(train), generator=shuffle).to(device)
                total, entries = 0.0, 0
                for step in range(steps):
                    rows = order[step * config.batch_size:(step + 1) * config.batch_size]
                    batch_labels = labels[rows]
                    if not bool((batch_labels != 0).any()):
                        continue
                    scores = head(torch.cat([features_0[rows], features_1[rows]]))
                    losses, mask = pairwise_losses(*scores.chunk(2), batch_labels)
                    loss = losses[mask].mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * int(mask.sum())
                    entries += int(mask.sum())
                record = {"epoch": epoch, "train_loss": total / max(entries, 1)}
                if val is not None:
                    metrics = pair_metrics(*score_pairs(head, val, device=device), val.labels, axes)
                    record.update(val_loss=metrics["loss"], val_loss_per_axis=metrics["loss_per_axis"], val_accuracy=metrics["accuracy"])
                    current = metrics["loss"]
                else:
                    metrics = {}
                    current = -epoch  # no validation: every epoch is "better", the last is kept
                history.append(record)
                logger.info(
                    "epoch %d: train loss %.4f%s", epoch, record["train_loss"],
                    "" if val is None else f", val loss {record['val_loss']:.4f}, val acc "
                    + " ".join(f"{axis} {value:.3f}" for axis, value in record["val_accuracy"].items() if value is not None),
                )
                bar.set_postfix({"train": f"{record['train_loss']:.4f}", **({"val": f"{record['val_loss']:.4f}"} if val is not None else {})})
                bar.update(1)
                if current < best_loss:
                    best_loss, best_epoch, stale = current, epoch, 0
                    best_state = copy.deepcopy({key: value.detach().cpu() for key, value in head.state_dict().items()})
                    best_metrics = metrics
                else:
                    stale += 1
                    if config.patience and stale >= config.patience:
                        stopped_early = True
                        logger.info("no lower validation loss for %d epochs: stopping after epoch %d (best: epoch %d)", stale, epoch, best_epoch)
                        break
        final = build_head(train.feature_dim, len(axes))  # inside fork_rng: its random init is overwritten anyway
        final.load_state_dict(best_state, strict=True)
        final.eval()
    if val is None:
        best_metrics = pair_metrics(*score_pairs(final, train), train.labels, axes)
    return FitResult(final, history, best_epoch, best_metrics, stopped_early, config, time.perf_counter() - started)


# -- from folders to a head file -----------------------------------------------------------
@dataclass
class FitReport:
    output: Path
    result: FitResult
    data: dict
    cache: str
    summary_lines: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return "\n".join(self.summary_lines)


def fit_from_folders(
    pairs_dirs: Sequence[str],
    label_files: Sequence[str],
    backbone: str,
    output: str,
    *,
    backbone_weights: str | None = None,
    cache_dir: str | None = None,
    config: FitConfig = FitConfig(),
    val_fraction: float = 0.1,
    split: Sequence[int] | None = None,
    encoding: str = "auto",
    feature_batch_size: int = 8,
    feature_device: str = "auto",
    feature_dtype: str = "fp32",
    workers: int = 2,
    progress: bool = True,
) -> FitReport:
    """Read labelled pairs, make sure their features are cached, train, and export the head.

    The head file (``save_head``) carries metadata ``creward.backbone``, ``creward.axes`` and
    ``creward.data`` (folders, label files, pair counts per part), ``creward.metrics`` (best
    epoch, validation loss and accuracy per axis, history), ``creward.optimizer`` and
    ``creward.features`` (cache, weights identity, precision).
    """
    from ..models.head import save_head
    from .features import cache_features, open_cache
    from .pairs import load_pair_set, positional_split, random_split

    pair_set = load_pair_set(pairs_dirs, label_files, encoding=encoding)
    if split:
        parts = positional_split(pair_set, split)
        split_description = {"kind": "positional per folder", "sizes": list(split)}
    else:
        parts = random_split(pair_set, val_fraction, seed=config.seed)
        split_description = {"kind": "random", "val_fraction": val_fraction, "seed": config.seed}
    train_set, val_set = parts["train"], parts.get("val")
    if len(train_set) == 0:
        raise FitError(f"no training pairs left after the split {split_description} of {', '.join(map(str, label_files))}")
    check_trainable(train_set.decisive_counts(), f"the training part of {', '.join(map(str, label_files))}")
    used = train_set.images + (val_set.images if val_set is not None else [])
    cache, weights_path = open_cache(backbone, backbone_weights, cache_dir, require_weights=False)
    cache_summary = cache_features(
        used, cache, weights_path, batch_size=feature_batch_size, device=feature_device, dtype=feature_dtype,
        workers=workers, progress=progress,
    )
    logger.info("%s", cache_summary.describe())
    train = PairFeatures.from_pair_set(train_set, cache)
    val = PairFeatures.from_pair_set(val_set, cache) if val_set is not None and len(val_set) else None
    result = fit_head(train, val, config, progress=progress)

    data = {
        "split": split_description,
        "train": train_set.describe(),
        "val": val_set.describe() if val_set is not None else None,
    }
    if "test" in parts:
        data["test_held_out"] = {"pairs": len(parts["test"]), "decisive": parts["test"].decisive_counts()}
    metrics = {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "on": "val" if val is not None else "train",
        "loss": result.best.get("loss"),
        "loss_per_axis": result.best.get("loss_per_axis"),
        "accuracy": result.best.get("accuracy"),
        "history": result.history,
    }
    features = {"cache": str(cache.folder), "weights_id": cache.weights_id, "dtype": cache.dtype, "feature_dim": cache.feature_dim}
    path = save_head(
        result.head, output, backbone, AXES,
        extra_metadata={"data": data, "metrics": metrics, "optimizer": config.optimizer_settings(), "features": features},
    )
    lines = [
        f"head: {path} (backbone {backbone}, {train.feature_dim}-wide features)",
        f"data: {len(train_set)} training pairs, {len(val_set) if val_set is not None else 0} validation pairs"
        + (f", {len(parts['test'])} test pairs held out" if "test" in parts else "")
        + f" from {len(pair_set.sources)} folder(s)",
        "decisive training pairs: " + ", ".join(f"{axis} {count}" for axis, count in train_set.decisive_counts().items())
        + (f"; {train_set.all_ties()} pair(s) are ties on every axis (no training signal)" if train_set.all_ties() else ""),
        f"training: {len(result.history)} epoch(s) in {result.seconds:.1f} s, best epoch {result.best_epoch}"
        + (" (stopped early)" if result.stopped_early else ""),
    ]
    on = "validation" if val is not None else "training (no validation)"
    if result.best.get("loss") is not None:
        lines.append(f"{on} loss: {result.best['loss']:.4f}")
    lines.append(f"{on} accuracy: " + ", ".join(
        f"{axis} {value:.3f}" if value is not None else f"{axis} n/a" for axis, value in (result.best.get("accuracy") or {}).items()
    ))
    lines.append(f"features: {cache_summary.computed} computed, {cache_summary.cached} from cache {cache.folder}")
    return FitReport(path, result, data, str(cache.folder), lines)


# -- CLI -----------------------------------------------------------------------------------
def register(subparsers) -> None:
    from .features import add_backbone_arguments
    from .pairs import ENCODINGS

    parser = subparsers.add_parser(
        "fit",
        help="train the reward head on labelled pairs (Bradley-Terry, backbone frozen)",
        description="Train the CREward head on labelled pairs from cached backbone features and export it as a head file.",
    )
    parser.add_argument("pairs_dirs", nargs="+", metavar="PAIRS_DIR", help="folders of pair_{idx:04d}_0.png / _1.png")
    parser.add_argument("--labels", nargs="+", required=True, metavar="LABELS", help="one labels file per PAIRS_DIR, same order: .jsonl (creward train label) or CreBench arrays .npy/.json")
    parser.add_argument("-o", "--output", required=True, metavar="HEAD.safetensors", help="head file to write")
    add_backbone_arguments(parser)
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=positive_int, default=20, help="epochs (default 20)")
    group.add_argument("--seed", type=int, default=0, help="seed of split, initialisation, shuffling and dropout (default 0)")
    group.add_argument("--lr", type=positive_float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    group.add_argument("--weight-decay", type=non_negative_float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    group.add_argument("--train-batch-size", type=positive_int, default=64, metavar="N", help="pairs per optimiser step (default 64)")
    group.add_argument("--patience", type=non_negative_int, default=5, help="stop after N epochs without a lower validation loss; 0: never (default 5)")
    which = group.add_mutually_exclusive_group()
    which.add_argument("--val-fraction", type=fraction_below_one, default=0.1, help="seeded random fraction of pairs held out for validation, 0 to <1 (default 0.1)")
    which.add_argument("--split", metavar="SIZES", help="'crebench' (=800,100,100) or TRAIN,VAL[,TEST]: per folder in file order; the test part is left out")
    group.add_argument("--label-encoding", choices=ENCODINGS, default="auto", help="values of label arrays: index (0 first wins, 1 second, 2 tie), signed (+1/-1/0) or auto (default)")
    group.add_argument("--head-device", default="cpu", help="device for head training (default cpu; the head is small)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .pairs import check_label_files, split_argument

    check_label_files(args.pairs_dirs, args.labels)
    split = split_argument(args.split)
    check_device(args.device)
    check_device(args.head_device, "--head-device")
    config = FitConfig(
        epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.train_batch_size,
        patience=args.patience or None, seed=args.seed, device=args.head_device,
    )
    report = fit_from_folders(
        args.pairs_dirs, args.labels, args.backbone, args.output,
        backbone_weights=args.backbone_weights, cache_dir=args.cache, config=config,
        val_fraction=args.val_fraction, split=split,
        encoding=args.label_encoding, feature_batch_size=args.batch_size, feature_device=args.device,
        feature_dtype=args.dtype, workers=args.workers, progress=not args.no_progress,
    )
    print(report.describe())
    return 0
