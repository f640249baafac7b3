"""``creward train eval``: how well a head orders labelled pairs, per axis.

Usage::

    creward train eval --head HEAD PAIRS_DIR... --labels LABELS... [--backbone-weights P] [--cache DIR]
        [--split crebench --part test] [--json] [--report DIR]

Metrics:

- **pairwise accuracy** per axis: the share of decisive pairs (label A or B; ties excluded)
  where the image the label prefers scores strictly higher on that axis. An axis without a
  decisive pair has no accuracy (``null`` in JSON, with a warning).
- for a **human-rated set** (label arrays ``[raters, pairs, 4]``), also, per axis:

  - Spearman rank correlation between the model's score of each image and its human win rate
    (share of the raters' comparisons of that image it won; a tie counts half);
  - the model's agreement with each rater (pairwise accuracy against that rater's decisive
    labels), beside each rater's agreement with the majority of the other raters (a human
    reference). Accuracy is against the per-pair majority of the raters' decisive votes
    (a rater's tie abstains; as many A as B votes: tie).

``--json`` prints exactly ``{"geometry": acc, "material": acc, "texture": acc, "overall": acc,
"pairs": n}`` on stdout (``pairs``: labelled pairs evaluated). ``--report DIR`` writes
``DIR/report.md`` and the bar chart ``DIR/accuracy.png`` (drawn with Pillow: no plotting
library needed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..models.axes import AXES
from ..models.errors import CREwardError, WeightsError

logger = logging.getLogger(__name__)


class EvaluationError(CREwardError):
    """Nothing can be evaluated (e.g. no decisive pair on any axis)."""


# -- metrics -------------------------------------------------------------------------------
def pairwise_accuracy(scores_0: np.ndarray, scores_1: np.ndarray, labels: np.ndarray, axes: Sequence[str] = AXES) -> tuple[dict, dict]:
    """Accuracy per axis on decisive pairs (None where none) and the decisive counts.

    A pair counts as correct when ``label * (s0 - s1) > 0`` (equal scores are wrong).
    """
    scores_0, scores_1, labels = np.asarray(scores_0, float), np.asarray(scores_1, float), np.asarray(labels)
    accuracy, counts = {}, {}
    for column, axis in enumerate(axes):
        decisive = labels[:, column] != 0
        counts[axis] = int(decisive.sum())
        margin = (scores_0[decisive, column] - scores_1[decisive, column]) * labels[decisive, column]
        accuracy[axis] = float((margin > 0).mean()) if counts[axis] else None
    return accuracy, counts


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank."""
    values = np.asarray(values, float)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson on average ranks); None when either side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) != len(y):
        raise ValueError(f"spearman needs equal lengths, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return None
    rank_x, rank_y = average_ranks(x) - (len(x) + 1) / 2, average_ranks(y) - (len(y) + 1) / 2
    denominator = np.sqrt((rank_x ** 2).sum() * (rank_y ** 2).sum())
    return float((rank_x * rank_y).sum() / denominator) if denominator > 0 else None


def human_win_rates(rater_labels: np.ndarray, keys_0: Sequence[str], keys_1: Sequence[str], column: int) -> dict[str, float]:
    """Per image: share of the raters' comparisons it won (ties count half), on one axis."""
    wins: dict[str, float] = {}
    seen: dict[str, int] = {}
    for rater in rater_labels[:, :, column]:
        for key_0, key_1, label in zip(keys_0, keys_1, rater):
            share = 1.0 if label > 0 else 0.0 if label < 0 else 0.5
            wins[key_0] = wins.get(key_0, 0.0) + share
            wins[key_1] = wins.get(key_1, 0.0) + 1.0 - share
            seen[key_0] = seen.get(key_0, 0) + 1
            seen[key_1] = seen.get(key_1, 0) + 1
    return {key: wins[key] / seen[key] for key in wins}


def human_metrics(
    scores_0: np.ndarray,
    scores_1: np.ndarray,
    rater_labels: np.ndarray,
    keys_0: Sequence[str],
    keys_1: Sequence[str],
    axes: Sequence[str] = AXES,
) -> dict:
    """Spearman vs per-image human win rates, and agreement with each rater (see module doc)."""
    from .pairs import majority

    scores_0, scores_1 = np.asarray(scores_0, float), np.asarray(scores_1, float)
    raters = rater_labels.shape[0]
    result = {"raters": raters, "spearman": {}, "images": {}, "rater_agreement": [], "rater_vs_rest": []}
    image_scores = [{**dict(zip(keys_0, scores_0[:, column])), **dict(zip(keys_1, scores_1[:, column]))} for column in range(len(axes))]
    for column, axis in enumerate(axes):
        rates = human_win_rates(rater_labels, keys_0, keys_1, column)
        keys = list(rates)
        result["spearman"][axis] = spearman([image_scores[column][key] for key in keys], [rates[key] for key in keys])
        result["images"][axis] = len(keys)
    for rater in range(raters):
        accuracy, counts = pairwise_accuracy(scores_0, scores_1, rater_labels[rater], axes)
        result["rater_agreement"].append({"rater": rater, "accuracy": accuracy, "decisive": counts})
        if raters > 1:
            rest = majority(np.delete(rater_labels, rater, axis=0))
            agree = {}
            for column, axis in enumerate(axes):
                both = (rest[:, column] != 0) & (rater_labels[rater, :, column] != 0)
                agree[axis] = float((rest[both, column] == rater_labels[rater, both, column]).mean()) if both.any() else None
            result["rater_vs_rest"].append({"rater": rater, "accuracy": agree})
    result["mean_rater_agreement"] = {
        axis: _mean([entry["accuracy"][axis] for entry in result["rater_agreement"]]) for axis in axes
    }
    if result["rater_vs_rest"]:
        result["mean_rater_vs_rest"] = {axis: _mean([entry["accuracy"][axis] for entry in result["rater_vs_rest"]]) for axis in axes}
    return result


def _mean(values: list) -> float | None:
    values = [value for value in values if value is not None]
    return float(np.mean(values)) if values else None


@dataclass
class Evaluation:
    """Scores and metrics of one labelled set."""

    accuracy: dict[str, float | None]
    decisive: dict[str, int]
    pairs: int
    scores_0: np.ndarray
    scores_1: np.ndarray
    human: dict | None = None
    data: dict = field(default_factory=dict)
    axes: tuple[str, ...] = AXES

    def as_json(self) -> dict:
        """Exactly ``{axis: accuracy, ..., "pairs": n}``."""
        return {**{axis: self.accuracy[axis] for axis in self.axes}, "pairs": self.pairs}

    def summary_lines(self) -> list[str]:
        lines = [f"pairs evaluated: {self.pairs}"]
        for axis in self.axes:
            value = self.accuracy[axis]
            lines.append(f"  {axis:<9} accuracy {value:.3f} on {self.decisive[axis]} decisive pairs" if value is not None else f"  {axis:<9} accuracy n/a (no decisive pair)")
        if self.human:
            lines.append(f"human-rated set, {self.human['raters']} raters (accuracy above is against the per-pair majority):")
            for axis in self.axes:
                rho = self.human["spearman"][axis]
                agree = self.human["mean_rater_agreement"][axis]
                rest = (self.human.get("mean_rater_vs_rest") or {}).get(axis)
                lines.append(
                    f"  {axis:<9} Spearman vs image win rate {_fmt(rho)}, mean agreement with a rater {_fmt(agree)}"
                    + (f" (raters vs the others' majority: {_fmt(rest)})" if rest is not None else "")
                )
        return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def evaluate_scores(pair_set, scores_0: np.ndarray, scores_1: np.ndarray) -> Evaluation:
    """Metrics of given per-image scores ``[N, axes]`` on a :class:`~creward.train.pairs.PairSet`."""
    accuracy, decisive = pairwise_accuracy(scores_0, scores_1, pair_set.labels, pair_set.axes)
    for axis, count in decisive.items():
        if count == 0:
            logger.warning("axis %s has no decisive pair in this set (all ties): no accuracy for it", axis)
    if not any(decisive.values()):
        raise EvaluationError(f"no decisive pair on any axis in {', '.join(source.labels for source in pair_set.sources)}: nothing to evaluate")
    human = None
    if pair_set.rater_labels is not None:
        keys_0, keys_1 = [str(path) for path in pair_set.image_0], [str(path) for path in pair_set.image_1]
        human = human_metrics(scores_0, scores_1, pair_set.rater_labels, keys_0, keys_1, pair_set.axes)
    return Evaluation(accuracy, decisive, len(pair_set), np.asarray(scores_0), np.asarray(scores_1), human, pair_set.describe(), tuple(pair_set.axes))


# -- report --------------------------------------------------------------------------------
def draw_bar_chart(path: str | Path, series: dict[str, dict[str, float | None]], title: str, axes: Sequence[str] = AXES) -> Path:
    """A grouped bar chart (one group per axis, one bar per series, 0..1, chance line at 0.5) as PNG."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = 720, 420
    left, right, top, bottom = 60, 20, 50, 70
    colours = [(52, 101, 164), (237, 125, 49), (112, 173, 71), (128, 100, 162)]
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    plot_h = height - top - bottom
    y_of = lambda value: top + plot_h * (1.0 - value)  # noqa: E731
    draw.text((left, 15), title, fill="black", font=font)
    for tick in np.linspace(0, 1, 6):
        y = y_of(tick)
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        draw.text((10, y - 7), f"{tick:.1f}", fill="black", font=font)
    draw.line([(left, y_of(0.5)), (width - right, y_of(0.5))], fill=(200, 0, 0))
    draw.line([(left, top), (left, top + plot_h), (width - right, top + plot_h)], fill="black")
    group_w = (width - left - right) / len(axes)
    bar_w = group_w * 0.7 / max(len(series), 1)
    for number, axis in enumerate(axes):
        x0 = left + number * group_w + group_w * 0.15
        for index, values in enumerate(series.values()):
            value = values.get(axis)
            x = x0 + index * bar_w
            if value is None:
                draw.text((x + 2, y_of(0.05)), "n/a", fill="gray", font=font)
                continue
            value = min(max(float(value), 0.0), 1.0)
            draw.rectangle([x, y_of(value), x + bar_w - 3, y_of(0)], fill=colours[index % len(colours)])
            draw.text((x, y_of(value) - 16), f"{value:.2f}", fill="black", font=font)
        draw.text((x0, top + plot_h + 8), axis, fill="black", font=font)
    legend_x = left
    for index, name in enumerate(series):
        draw.rectangle([legend_x, height - 28, legend_x + 12, height - 16], fill=colours[index % len(colours)])
        draw.text((legend_x + 18, height - 30), name, fill="black", font=font)
        legend_x += 30 + int(draw.textlength(name, font=font))
    draw.text((width - right - 120, height - 30), "red line: chance", fill=(200, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_report(evaluation: Evaluation, folder: str | Path, head: str, backbone: str) -> Path:
    """``folder/report.md`` + ``folder/accuracy.png``; returns the Markdown path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series = {"model vs labels": evaluation.accuracy}
    if evaluation.human:
        series["model vs single rater (mean)"] = evaluation.human["mean_rater_agreement"]
        if evaluation.human.get("mean_rater_vs_rest"):
            series["rater vs other raters (mean)"] = evaluation.human["mean_rater_vs_rest"]
    draw_bar_chart(folder / "accuracy.png", series, f"Pairwise accuracy (ties excluded), {evaluation.pairs} pairs", evaluation.axes)
    lines = [
        "# CREward evaluation",
        "",
        f"- head: `{head}`",
        f"- backbone: `{backbone}`",
        f"- pairs evaluated: {evaluation.pairs}",
        "- label files: " + ", ".join(f"`{source['labels']}`" for source in evaluation.data.get("sources", [])),
        "",
        "## Pairwise accuracy (ties excluded)",
        "",
        "| axis | accuracy | decisive pairs |",
        "|---|---|---|",
    ]
    lines += [f"| {axis} | {_fmt(evaluation.accuracy[axis])} | {evaluation.decisive[axis]} |" for axis in evaluation.axes]
    if evaluation.human:
        human = evaluation.human
        lines += [
            "",
            f"## Human-rated set ({human['raters']} raters)",
            "",
            "Accuracy above is against the per-pair majority of the raters' decisive votes (ties abstain; as many A as B votes: tie).",
            "",
            "| axis | Spearman (score vs image win rate) | images | mean agreement with a rater | raters vs the others' majority |",
            "|---|---|---|---|---|",
        ]
        for axis in evaluation.axes:
            lines.append(
                f"| {axis} | {_fmt(human['spearman'][axis])} | {human['images'][axis]} | {_fmt(human['mean_rater_agreement'][axis])} | "
                f"{_fmt((human.get('mean_rater_vs_rest') or {}).get(axis))} |"
            )
        lines += ["", "### Agreement with each rater", "", "| rater | " + " | ".join(evaluation.axes) + " |", "|---" * (len(evaluation.axes) + 1) + "|"]
        for entry in human["rater_agreement"]:
            lines.append(f"| {entry['rater']} | " + " | ".join(_fmt(entry["accuracy"][axis]) for axis in evaluation.axes) + " |")
    lines += ["", "![accuracy](accuracy.png)", ""]
    report = folder / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


# -- from files ----------------------------------------------------------------------------
def evaluate_head(
    head: str,
    pairs_dirs: Sequence[str],
    label_files: Sequence[str],
    *,
    backbone: str | None = None,
    backbone_weights: str | None = None,
    cache_dir: str | None = None,
    split: Sequence[int] | None = None,
    part: str = "test",
    encoding: str = "auto",
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "fp32",
    workers: int = 2,
    progress: bool = True,
) -> tuple[Evaluation, str]:
    """Score every labelled pair with ``head`` (through the feature cache) and measure it.

    Returns the evaluation and the backbone name used.
    """
    from ..models.head import load_head
    from .features import cache_features, open_cache
    from .pairs import load_pair_set, positional_split

    head_module, info = load_head(head, backbone)
    if info.backbone is None:
        raise WeightsError(f"{head} does not say which backbone it was trained on (official .ckpt files carry no metadata): pass --backbone NAME")
    if tuple(info.axes) != tuple(AXES):
        raise WeightsError(f"{head} scores axes {list(info.axes)}; evaluation needs {list(AXES)}")
    pair_set = load_pair_set(pairs_dirs, label_files, encoding=encoding)
    if split:
        parts = positional_split(pair_set, split)
        if part not in parts:
            raise EvaluationError(f"split {','.join(map(str, split))} has no {part!r} part; parts: {', '.join(parts)}")
        pair_set = parts[part]
        if len(pair_set) == 0:
            raise EvaluationError(f"the {part!r} part of split {','.join(map(str, split))} holds no labelled pair")
    cache, weights_path = open_cache(info.backbone, backbone_weights, cache_dir, require_weights=False)
    summary = cache_features(pair_set.images, cache, weights_path, batch_size=batch_size, device=device, dtype=dtype, workers=workers, progress=progress)
    logger.info("%s", summary.describe())
    if cache.feature_dim != info.feature_dim:
        raise WeightsError(
            f"head {head} expects {info.feature_dim}-wide features but the {info.backbone!r} features in {cache.folder} "
            f"are {cache.feature_dim}-wide: the head was trained on other backbone weights"
        )
    from .fit import PairFeatures, score_pairs

    scores_0, scores_1 = score_pairs(head_module, PairFeatures.from_pair_set(pair_set, cache))
    return evaluate_scores(pair_set, scores_0.numpy(), scores_1.numpy()), info.backbone


# -- CLI -----------------------------------------------------------------------------------
def register(subparsers) -> None:
    from .features import add_backbone_arguments
    from .pairs import ENCODINGS, SPLIT_PARTS

    parser = subparsers.add_parser(
        "eval",
        help="pairwise accuracy of a head per axis on labelled pairs (+ human-set metrics, report)",
        description="Evaluate a CREward head on labelled pairs: pairwise accuracy per axis, ties excluded; "
        "for human-rated arrays also Spearman vs image win rates and agreement with each rater.",
    )
    parser.add_argument("--head", required=True, help="head file (.safetensors, or the official .ckpt with --backbone)")
    parser.add_argument("pairs_dirs", nargs="+", metavar="PAIRS_DIR", help="folders of pair_{idx:04d}_0.png / _1.png")
    parser.add_argument("--labels", nargs="+", required=True, metavar="LABELS", help="one labels file per PAIRS_DIR: .jsonl or CreBench arrays .npy/.json ([pairs,4] or [raters,pairs,4])")
    add_backbone_arguments(parser, backbone_required=False)
    parser.add_argument("--split", metavar="SIZES", help="'crebench' (=800,100,100) or TRAIN,VAL[,TEST]: evaluate only --part of each folder")
    parser.add_argument("--part", choices=SPLIT_PARTS, default="test", help="which part of --split to evaluate (default test)")
    parser.add_argument("--label-encoding", choices=ENCODINGS, default="auto", help="values of label arrays: index (0/1/2), signed (+1/-1/0) or auto")
    parser.add_argument("--json", action="store_true", help='print only {"geometry": acc, ..., "pairs": n} on stdout')
    parser.add_argument("--report", metavar="DIR", help="write DIR/report.md and DIR/accuracy.png")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..cli.arguments import UsageError, check_device
    from .pairs import SPLIT_PARTS, check_label_files, split_argument

    check_label_files(args.pairs_dirs, args.labels)
    split = split_argument(args.split)
    if split is not None and args.part not in SPLIT_PARTS[: len(split)]:
        raise UsageError(f"--part {args.part}: --split {args.split} has only the parts {', '.join(SPLIT_PARTS[: len(split)])}")
    check_device(args.device)
    evaluation, backbone = evaluate_head(
        args.head, args.pairs_dirs, args.labels, backbone=args.backbone, backbone_weights=args.backbone_weights,
        cache_dir=args.cache, split=split, part=args.part,
        encoding=args.label_encoding, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
        workers=args.workers, progress=not args.no_progress,
    )
    if args.report:
        report = write_report(evaluation, args.report, args.head, backbone)
        logger.info("wrote %s", report)
    if args.json:
        sys.stdout.write(json.dumps(evaluation.as_json()) + "\n")
        for line in evaluation.summary_lines():
            logger.info("%s", line)
    else:
        print("\n".join(evaluation.summary_lines()))
    return 0
