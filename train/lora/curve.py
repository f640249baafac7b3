"""The reward curve of a creative-LoRA run as a PIL image (plain Python, no ComfyUI)."""

from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT, MARGIN = 720, 420, 56
TRAIN_COLOUR, SMOOTH_COLOUR, EVAL_COLOUR = (170, 190, 235), (30, 70, 180), (215, 80, 30)


def _ema(values: Sequence[float], factor: float = 0.9) -> list[float]:
    smoothed, current = [], None
    for value in values:
        current = value if current is None else factor * current + (1 - factor) * value
        smoothed.append(current)
    return smoothed


def reward_curve(
    train: Sequence[tuple[int, float]],
    evals: Sequence[tuple[int, float]] = (),
    title: str = "mean reward",
) -> Image.Image:
    """Per-step training reward (light), its moving average (dark) and held-out evaluations (dots).

    ``train`` and ``evals`` are ``(step, reward)`` pairs; either may be empty.
    """
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    left, top, right, bottom = MARGIN, 28, WIDTH - 16, HEIGHT - MARGIN + 8
    draw.text((left, 8), title, fill="black", font=font)
    draw.rectangle([left, top, right, bottom], outline="black")
    points = list(train) + list(evals)
    if not points:
        draw.text((left + 10, top + 10), "no data yet", fill="gray", font=font)
        return image
    steps = [step for step, _ in points]
    values = [value for _, value in points]
    x_min, x_max = min(steps), max(max(steps), min(steps) + 1)
    y_min, y_max = min(values), max(values)
    if y_max - y_min < 1e-9:
        y_min, y_max = y_min - 0.5, y_max + 0.5
    pad = 0.05 * (y_max - y_min)
    y_min, y_max = y_min - pad, y_max + pad

    def xy(step, value):
        x = left + (step - x_min) / (x_max - x_min) * (right - left)
        y = bottom - (value - y_min) / (y_max - y_min) * (bottom - top)
        return x, y

    if len(train) > 1:
        draw.line([xy(s, v) for s, v in train], fill=TRAIN_COLOUR, width=1)
        smooth = _ema([v for _, v in train])
        draw.line([xy(s, v) for (s, _), v in zip(train, smooth)], fill=SMOOTH_COLOUR, width=2)
    elif train:
        x, y = xy(*train[0])
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=SMOOTH_COLOUR)
    if len(evals) > 1:
        draw.line([xy(s, v) for s, v in evals], fill=EVAL_COLOUR, width=1)
    for step, value in evals:
        x, y = xy(step, value)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=EVAL_COLOUR)

    for fraction in (0.0, 0.5, 1.0):
        value = y_min + fraction * (y_max - y_min)
        _, y = xy(x_min, value)
        draw.text((4, y - 6), f"{value:.3g}", fill="black", font=font)
    draw.text((left, bottom + 6), str(x_min), fill="black", font=font)
    draw.text((right - 40, bottom + 6), str(x_max), fill="black", font=font)
    draw.text(((left + right) // 2 - 12, bottom + 6), "step", fill="black", font=font)
    legend_y = HEIGHT - 18
    draw.line([(left, legend_y + 5), (left + 20, legend_y + 5)], fill=SMOOTH_COLOUR, width=2)
    draw.text((left + 26, legend_y), "training reward (moving average)", fill="black", font=font)
    draw.ellipse([left + 260, legend_y + 1, left + 268, legend_y + 9], fill=EVAL_COLOUR)
    draw.text((left + 274, legend_y), "held-out samples", fill="black", font=font)
    return image
