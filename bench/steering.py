"""Creative sampling (issue 9): final reward against model evaluations, and the cost of preview scoring.

    python bench/steering.py [--quick] [--out bench/steering.png] [--samples 64] [--repeats 5]

ComfyUI is imported in-process as the tests do (``tests/comfyui_harness.load_comfyui_inprocess`` on a
fresh base directory); the models come from ``tests/builders``. Two parts:

1. **Analytic model** (``builders.analytic_diffusion``: a 4-prototype mixture whose denoiser is exact,
   decoded by ``LinearDecoder`` and scored by ``ToyReward``; the best prototype on ``overall`` has the
   smallest weight, 0.1). One batch of ``--samples`` latents from a seed no test uses, 20 steps, cfg 1,
   ``normal`` scheduler. For each method, the mean *true* reward (``ToyReward`` overall of the returned
   latent) against model evaluations per sample, counted by the denoiser (``rows`` / samples):

   - best-of-N, N = 1 .. 16, with ``euler`` (deterministic: pruned runs follow exactly the same
     trajectories, so the comparison is paired) and with ``euler_ancestral`` (FK's sampler);
   - pruned best-of-N (``euler``), N = 8 and 16, m = 1 and 2, three checkpoint schedules;
   - FK resampling (``euler_ancestral``), N = 2, 4, 8, the plan's defaults and an early, greedier plan;
   - reward guidance (``euler``), a few scales; its evaluations are the steps (each guided step adds a
     backward pass through the decoder and the reward, which is not a model evaluation).

   For the pruning target it reports, per N, the cheapest pruned plan that *reaches* full best-of-N's
   reward: recovers at least 95 % of best-of-N's gain over a single sample (N = 1), and the share of
   samples where it returned the very latent best-of-N returned.

2. **Tiny SD1.x** (ComfyUI's SD1.x UNet, 64 channels, 2 levels, random weights; a random TAESD in
   ``models/vae_approx`` for the previews; the tiny random CLIP CREward of the tests): one latent,
   N particles, 20 steps, cfg 5, ``euler_ancestral``. Wall time per step of plain sampling of the N
   latents as one batch (``comfy.sample.sample``, the baseline) against best-of-N, pruning and FK
   steering with TAESD previews scored at the checkpoints (same N, same steps), and guidance; the
   median of ``--repeats`` runs after a warm-up, interleaved so that load changes hit every mode.
   The overhead of preview scoring is ``FK / plain - 1`` (target <= 15 %). The mean reward of these
   runs (random weights: a number, not a quality) is plotted next to the analytic panel.

The plot (``--out``) shows reward against evaluations per sample, one series per method.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

STEPS = 20
ANALYTIC_SEED = 90210  # tests use seeds below 300
WEIGHTS = (0.4, 0.3, 0.2, 0.1)
SPREAD = 0.05
GAIN_REACHED = 0.95


def load_comfyui(base: Path):
    import comfyui_harness as harness
    from comfyui_setup import ensure_comfyui

    return harness.load_comfyui_inprocess(ensure_comfyui(), harness.make_base_dir(base))


def machine() -> str:
    import torch

    try:
        model = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (StopIteration, OSError):
        model = platform.processor() or platform.machine()
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[0]
    return (f"{model}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"Python {platform.python_version()}, load average {load} at start")


# -- part 1: analytic model ---------------------------------------------------------------------
class Analytic:
    def __init__(self, samples: int):
        import torch

        from builders import analytic_diffusion as ad
        from builders.comfy_diffusion import tiny_conditioning
        from creward.diffusion.decoders import PreviewDecoder
        from creward.diffusion.reward import LatentReward, RewardSpec

        self.torch = torch
        self.ad = ad
        self.model = ad.analytic_model(ad.prototype_latents(), WEIGHTS, SPREAD, "eps")
        self.denoiser = self.model.model.diffusion_model
        self.decoder = ad.LinearDecoder()
        self.scorer = ad.ToyReward().eval()
        self.reward = LatentReward(self.scorer, RewardSpec.parse("overall", ad.AXES),
                                   PreviewDecoder(self.decoder, "vae", "linear"), batch_size=1024)
        self.positive, self.negative = tiny_conditioning(2)
        self.samples = samples
        overall = ad.prototype_rewards(self.model, self.decoder, self.scorer)[:, ad.AXES.index("overall")]
        self.top = float(overall.max())
        self.expected_plain = float((torch.tensor(WEIGHTS) * overall).sum())

    def latent(self):
        return self.torch.zeros(self.samples, 4, 8, 8)

    def true_reward(self, vae_latents):
        with self.torch.no_grad():
            images = self.ad.decode_images(self.decoder, vae_latents)
            return self.scorer(images)[:, self.ad.AXES.index("overall")]

    def steer(self, plan, sampler: str) -> dict:
        from creward.diffusion.creative_sampling import creative_sample

        self.denoiser.reset_counts()
        started = time.perf_counter()
        with self.torch.inference_mode():
            samples, report = creative_sample(self.model, self.positive, self.negative, self.latent(), ANALYTIC_SEED, STEPS,
                                              1.0, sampler, "normal", plan, self.reward)
        seconds = time.perf_counter() - started
        evaluations = self.denoiser.rows / self.samples
        if abs(evaluations - report.evaluations_per_latent) > 1e-9:
            raise RuntimeError(f"the denoiser counted {evaluations} evaluations per sample, the report {report.evaluations_per_latent}")
        rewards = self.true_reward(samples)
        return {"samples": samples, "rewards": rewards, "reward": float(rewards.mean()), "evaluations": evaluations,
                "seconds": seconds, "plan": report.plan}

    def guide(self, scale: float) -> dict:
        import comfy.sample

        from creward.diffusion.guidance import GuidanceSettings, guided_model

        model, guidance = guided_model(self.model, self.reward, GuidanceSettings(scale=scale, end_percent=0.9))
        latent = self.latent()
        self.denoiser.reset_counts()
        started = time.perf_counter()
        with self.torch.inference_mode():
            samples = comfy.sample.sample(model, comfy.sample.prepare_noise(latent, ANALYTIC_SEED), STEPS, 1.0, "euler",
                                          "normal", self.positive, self.negative, latent, seed=ANALYTIC_SEED, disable_pbar=True)
        seconds = time.perf_counter() - started
        rewards = self.true_reward(samples)
        return {"samples": samples, "rewards": rewards, "reward": float(rewards.mean()),
                "evaluations": self.denoiser.rows / self.samples, "seconds": seconds, "guided_steps": guidance.steps_guided}


def run_analytic(options) -> dict:
    from creward.diffusion.steering_plan import SteeringPlan

    bench = Analytic(options.samples)
    quick = options.quick
    sizes = (1, 2, 4, 8) if quick else (1, 2, 4, 8, 16)
    prune_sizes = (8,) if quick else (8, 16)
    schedules = {"early (1, 3)": dict(checkpoint_steps=(1, 3)), "single (4)": dict(checkpoint_steps=(4,)),
                 "default (4, 8, 12)": {}}
    fk_plans = {"FK default (λ 10, steps 4, 8, 12)": dict(temperature=10.0),
                "FK early (λ 30, steps 1, 2, 3, 5, 8)": dict(temperature=30.0, checkpoint_steps=(1, 2, 3, 5, 8))}
    results: dict[str, list[dict]] = {}

    def add(series: str, entry: dict) -> None:
        results.setdefault(series, []).append(entry)
        extra = f" m={entry['m']} {entry['schedule']}" if "m" in entry else ""
        print(f"  {series:<40} N={entry.get('N', 1):<3}{extra:<24} evals/sample {entry['evaluations']:>6.1f}  "
              f"reward {entry['reward']:.4f}  ({entry['seconds']:.1f} s)", flush=True)

    for sampler in ("euler", "euler_ancestral"):
        for n in sizes:
            add(f"best-of-N ({sampler})", dict(bench.steer(SteeringPlan(mode="best-of-n", particles=n), sampler), N=n))
    for n in prune_sizes:
        for m in (1, 2):
            for schedule, settings in schedules.items():
                entry = bench.steer(SteeringPlan(mode="prune", particles=n, survivors=m, **settings), "euler")
                add("pruned best-of-N (euler)", dict(entry, N=n, m=m, schedule=schedule))
    for name, settings in fk_plans.items():
        for n in ((2, 4) if quick else (2, 4, 8)):
            add(f"{name} (euler_ancestral)", dict(bench.steer(SteeringPlan(mode="resample", particles=n, **settings),
                                                              "euler_ancestral"), N=n))
    for scale in ((0.3, 1.0) if quick else (0.1, 0.3, 0.6, 1.0)):
        add("guidance (euler)", dict(bench.guide(scale), scale=scale))

    # pruning target: per N, the cheapest pruned plan reaching full best-of-N's reward
    full = {entry["N"]: entry for entry in results["best-of-N (euler)"]}
    single = full[1]
    verdicts = []
    for entry in results["pruned best-of-N (euler)"]:
        reference = full[entry["N"]]
        gain = reference["reward"] - single["reward"]
        entry["recovered"] = (entry["reward"] - single["reward"]) / gain if gain > 0 else float("nan")
        same = (entry["samples"] - reference["samples"]).flatten(1).abs().amax(1) < 1e-4
        entry["same_pick"] = float(same.float().mean())
        entry["ratio"] = entry["evaluations"] / reference["evaluations"]
    for n in prune_sizes:
        candidates = sorted((e for e in results["pruned best-of-N (euler)"] if e["N"] == n), key=lambda e: e["evaluations"])
        reached = [e for e in candidates if e["recovered"] >= GAIN_REACHED]
        verdicts.append((n, reached[0] if reached else None, full[n]))
    return {"bench": bench, "results": results, "verdicts": verdicts}


def print_analytic(part: dict) -> None:
    bench, results = part["bench"], part["results"]
    print(f"\nanalytic model: best prototype reward {bench.top:.4f}; a plain sample's expected reward {bench.expected_plain:.4f}")
    print(f"{'method':<48}{'N':>4}{'m':>3} {'schedule':<20}{'evals/sample':>13}{'mean reward':>13}{'vs N=1':>9}")
    single = results["best-of-N (euler)"][0]["reward"]
    for series, entries in results.items():
        for entry in entries:
            label = entry.get("schedule", f"scale {entry['scale']}" if "scale" in entry else "")
            print(f"{series:<48}{entry.get('N', 1):>4}{entry.get('m', ''):>3} {label:<20}"
                  f"{entry['evaluations']:>13.1f}{entry['reward']:>13.4f}{entry['reward'] - single:>+9.4f}")
    print(f"\npruned best-of-N against full best-of-N at equal N (euler; 'recovered' = share of best-of-N's gain over N = 1):")
    print(f"{'N':>4}{'m':>3} {'schedule':<20}{'evals':>7}{'ratio':>8}{'recovered':>11}{'same latent':>13}")
    for entry in results["pruned best-of-N (euler)"]:
        print(f"{entry['N']:>4}{entry['m']:>3} {entry['schedule']:<20}{entry['evaluations']:>7.0f}{entry['ratio']:>8.2f}"
              f"{entry['recovered']:>11.3f}{entry['same_pick']:>13.3f}")
    for n, reached, full in part["verdicts"]:
        if reached is None:
            print(f"target (pruned reaches best-of-{n} at <= 50 % of its evaluations): NOT MET: no plan recovered "
                  f"{GAIN_REACHED:.0%} of best-of-{n}'s gain")
        else:
            verdict = "met" if reached["ratio"] <= 0.5 else "NOT MET"
            print(f"target (pruned reaches best-of-{n} at <= 50 % of its evaluations): {verdict}: m={reached['m']} "
                  f"{reached['schedule']}, {reached['evaluations']:.0f} of {full['evaluations']:.0f} evaluations "
                  f"(ratio {reached['ratio']:.2f}), recovers {reached['recovered']:.1%} of the gain, same latent on "
                  f"{reached['same_pick']:.0%} of samples")


# -- part 2: tiny SD1.x, time per step ----------------------------------------------------------
def run_sd(options, base: Path) -> dict:
    import comfy.sample
    import torch

    from builders.comfy_diffusion import tiny_conditioning, tiny_sd15_model
    from builders.comfyui_models import install_creward_clip, install_taesd
    from creward.diffusion.creative_sampling import creative_sample, reward_builder
    from creward.diffusion.guidance import GuidanceSettings, guided_model
    from creward.diffusion.reward import RewardSpec
    from creward.diffusion.steering_plan import SteeringPlan
    from creward.models import load

    install_taesd(base / "models")
    files = install_creward_clip(base / "models")
    creward = load(files["head"], backbone_weights=files["backbone"])
    spec = RewardSpec.parse("overall", creward.axes)
    model = tiny_sd15_model(seed=1, model_channels=options.channels, levels=2)
    positive, negative = tiny_conditioning(2)
    n, cfg, size = options.particles, 5.0, options.size
    latent = torch.zeros(1, 4, size // 8, size // 8)
    batch_latent = latent.repeat(n, 1, 1, 1)
    sampler = "euler_ancestral"
    # the same scorer scores every mode's final latents, outside the timed region
    judge = reward_builder(creward, spec, "taesd", decode_batch=n)(model.model)
    plans = {
        f"best-of-{n}": SteeringPlan(mode="best-of-n", particles=n),
        f"pruned {n}->1 (default checkpoints)": SteeringPlan(mode="prune", particles=n, survivors=1),
        f"FK {n} particles (default checkpoints)": SteeringPlan(mode="resample", particles=n),
    }

    def plain(seed):
        with torch.inference_mode():
            samples = comfy.sample.sample(model, comfy.sample.prepare_noise(batch_latent, seed), STEPS, cfg, sampler, "normal",
                                          positive, negative, batch_latent, seed=seed, disable_pbar=True)
        return samples, {"evaluations": STEPS, "scoring": 0.0}

    def steered(plan):
        def run(seed):
            with torch.inference_mode():
                samples, report = creative_sample(model, positive, negative, latent, seed, STEPS, cfg, sampler, "normal", plan,
                                                  reward_builder(creward, spec, "taesd", decode_batch=n))
            return samples, {"evaluations": report.evaluations_per_latent, "scoring": report.checkpoint_seconds,
                             "plan": report.plan}
        return run

    guided, guidance = guided_model(model, reward_builder(creward, spec, "taesd", decode_batch=n),
                                    GuidanceSettings(scale=0.3, end_percent=0.8, every=4))

    def guide(seed):
        with torch.inference_mode():
            samples = comfy.sample.sample(guided, comfy.sample.prepare_noise(batch_latent, seed), STEPS, cfg, sampler, "normal",
                                          positive, negative, batch_latent, seed=seed, disable_pbar=True)
        return samples, {"evaluations": STEPS, "scoring": 0.0}

    modes = {f"plain, batch of {n} (baseline)": plain, **{name: steered(plan) for name, plan in plans.items()},
             f"guidance, batch of {n} (scale 0.3, every 4th step to 80 %)": guide}
    timings = {name: [] for name in modes}
    rewards = {name: [] for name in modes}
    info = {}
    for repeat in range(options.repeats + 1):  # repeat 0 is the warm-up
        for name, function in modes.items():
            started = time.perf_counter()
            samples, details = function(1000 + repeat)
            seconds = time.perf_counter() - started
            print(f"  {'warm-up' if repeat == 0 else f'run {repeat}'}: {name:<46} {seconds / STEPS:.4f} s/step", flush=True)
            if repeat == 0:
                continue
            timings[name].append(seconds / STEPS)
            rewards[name] += judge.values(judge.scores(samples)).tolist()
            info[name] = details
    baseline = statistics.median(timings[next(iter(modes))])
    rows = []
    for name in modes:
        step = statistics.median(timings[name])
        rows.append({"mode": name, "step_s": step, "ratio": step / baseline, "evaluations": info[name]["evaluations"],
                     "reward": statistics.fmean(rewards[name]), "spread": (min(timings[name]), max(timings[name])),
                     "plan": info[name].get("plan", "")})
    return {"rows": rows, "particles": n, "size": size, "channels": options.channels, "guided_steps": guidance.steps_guided,
            "repeats": options.repeats}


def print_sd(part: dict) -> None:
    n = part["particles"]
    print(f"\ntiny SD1.x (UNet {part['channels']} channels, 2 levels), {part['size']} px, 1 latent x {n} particles, {STEPS} steps, "
          f"cfg 5, euler_ancestral, TAESD previews + tiny CLIP CREward; median of {part['repeats']} runs")
    print(f"{'mode':<48}{'s/step':>9}{'min..max':>16}{'vs plain':>10}{'evals/sample':>14}{'mean reward':>13}")
    for row in part["rows"]:
        low, high = row["spread"]
        print(f"{row['mode']:<48}{row['step_s']:>9.4f}{f'{low:.3f}..{high:.3f}':>16}{row['ratio']:>9.3f}x"
              f"{row['evaluations']:>14.1f}{row['reward']:>13.4f}")
    fk = next(row for row in part["rows"] if row["mode"].startswith("FK"))
    verdict = "met" if fk["ratio"] - 1 <= 0.15 else "NOT MET"
    print(f"target (preview scoring adds <= 15 % to the step time): {verdict}: FK with TAESD previews "
          f"{(fk['ratio'] - 1):+.1%} over plain sampling ({fk['plan']})")


# -- the plot -----------------------------------------------------------------------------------
def plot(analytic: dict, sd: dict | None, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if sd else 1
    figure, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 5.2), squeeze=False)
    ax = axes[0][0]
    styles = {"best-of-N (euler)": ("o-", "C0"), "best-of-N (euler_ancestral)": ("o--", "C7")}
    for index, (series, entries) in enumerate(analytic["results"].items()):
        entries = sorted(entries, key=lambda e: e["evaluations"])
        x = [e["evaluations"] for e in entries]
        y = [e["reward"] for e in entries]
        if series.startswith("pruned"):
            for marker, m in (("^", 1), ("s", 2)):
                chosen = [e for e in entries if e["m"] == m]
                ax.scatter([e["evaluations"] for e in chosen], [e["reward"] for e in chosen], marker=marker, color="C3",
                           label=f"pruned best-of-N (euler), m = {m}", zorder=3)
            continue
        style, colour = styles.get(series, (".-", None))
        if colour is None:
            colour = ("C2" if series.startswith("FK default") else "C4" if series.startswith("FK early") else "C5")
        ax.plot(x, y, style, color=colour, label=series)
        for entry in entries:
            if "N" in entry or "scale" in entry:
                ax.annotate(f"{entry['N']}" if "N" in entry else f"scale {entry['scale']:g}", (entry["evaluations"], entry["reward"]), textcoords="offset points",
                            xytext=(3, -10), fontsize=7, color=colour)
    bench = analytic["bench"]
    ax.axhline(bench.top, color="k", linestyle=":", linewidth=1, label=f"best prototype ({bench.top:.3f})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("model evaluations per sample (log scale)")
    ax.set_ylabel("mean final reward (ToyReward overall)")
    ax.set_title(f"analytic model, {bench.samples} samples, {STEPS} steps")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    if sd:
        ax = axes[0][1]
        for index, row in enumerate(sd["rows"]):
            ax.scatter([row["evaluations"]], [row["reward"]], color=f"C{index}", s=40,
                       label=f"{row['mode']} ({row['ratio']:.2f}x step time)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("UNet evaluations per sample (log scale)")
        ax.set_ylabel("mean final reward (random CLIP CREward, overall)")
        ax.set_title(f"tiny SD1.x, random weights, {sd['size']} px, {STEPS} steps")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    print(f"\nplot: {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, sizes and repeats (a smoke run)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "steering.png", help="the plot (PNG)")
    parser.add_argument("--samples", type=int, help="analytic: latents per run (default 64, --quick 16)")
    parser.add_argument("--repeats", type=int, help="tiny SD1.x: timed runs per mode (default 5, --quick 2)")
    parser.add_argument("--particles", type=int, default=4, help="tiny SD1.x: particles N (default 4)")
    parser.add_argument("--size", type=int, default=128, help="tiny SD1.x: image size in pixels (default 128)")
    parser.add_argument("--channels", type=int, default=64, help="tiny SD1.x: UNet model_channels (default 64)")
    parser.add_argument("--skip-sd", action="store_true", help="only the analytic part")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a small shared machine, 2 threads spin against other "
                             "processes and step times jump by 10x; 1 thread keeps the ratios stable)")
    options = parser.parse_args()
    options.samples = options.samples or (16 if options.quick else 64)
    options.repeats = options.repeats or (2 if options.quick else 5)
    started = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="creward-steering-bench-"))
    load_comfyui(base)
    import torch

    torch.set_num_threads(options.threads)
    torch.manual_seed(0)
    where = machine()
    print(f"machine: {where}; ComfyUI loaded in {time.perf_counter() - started:.1f} s", flush=True)
    analytic_started = time.perf_counter()
    analytic = run_analytic(options)
    analytic_seconds = time.perf_counter() - analytic_started
    print_analytic(analytic)
    print(f"(analytic part: {analytic_seconds:.1f} s)")
    sd = None
    if not options.skip_sd:
        sd_started = time.perf_counter()
        sd = run_sd(options, base)
        print_sd(sd)
        print(f"(tiny SD1.x part: {time.perf_counter() - sd_started:.1f} s)")
    plot(analytic, sd, options.out, f"bench/steering.py{' --quick' if options.quick else ''}: {where}")
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
