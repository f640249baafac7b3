"""Peak memory of loading siglip-gemma3: CREward's vision-only loader vs the whole Gemma 3 model.

The official code (github.com/han-j-y/CREward ``src/models.py``) builds
``Gemma3ForConditionalGeneration.from_pretrained(MODEL_ID, torch_dtype=self.dtype)`` with
``CreativityReward(dtype=torch.float32)`` by default, and takes the vision tower and projector
from it; CREward reads only the vision-tower and projector tensors. The faithful baseline, and
the headline, is therefore the official float32 load. This script writes a scaled-down random
Gemma 3 folder whose language model dominates as in the real 4B (bf16 shards like the Hub's),
then, each in a fresh subprocess, loads it one way, embeds one 896-pixel image, and reports the
peak resident memory (``VmHWM`` from /proc/self/status, and ``ru_maxrss``) together with the
resident memory right after the imports. Extra rows: CREward in bf16 (built directly in bf16, as
``load(dtype="bf16")`` does), CREward's float32 build cast to bf16 afterwards (what
``load(dtype="bf16")`` did before), and transformers 5's default ``from_pretrained`` (``dtype="auto"``:
bf16, memory-mapped).

Usage::

    python bench/gemma3_memory.py                # default scaled config, prints a Markdown block
    python bench/gemma3_memory.py --vocab 65536 --text-layers 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


BASELINE = "official-fp32"
MODES = {
    BASELINE: "official: Gemma3ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32) (its default)",
    "ours": "CREward vision-only loader, float32 (its default)",
    "ours-bf16": "CREward vision-only loader, built in bf16 (load(dtype='bf16'))",
    "ours-cast-bf16": "CREward float32 build, then .to(bf16) (load(dtype='bf16') before building in bf16)",
    "official": "official with transformers 5's default dtype='auto' (bf16 here, memory-mapped)",
    "official-touched": "the same, every weight read once (as when moved to a GPU)",
}


def _child(mode: str, folder: str) -> None:
    """Runs in a fresh interpreter: load one way, embed one image, print a JSON line."""
    import torch
    import transformers  # noqa: F401  (same imports in every mode, so the baselines match)

    import creward.models  # noqa: F401
    from creward.models.backbones.registry import load_backbone

    import_rss = _status_mb("VmRSS")
    start = time.perf_counter()
    if mode.startswith("ours"):
        model = load_backbone("siglip-gemma3", folder, dtype=torch.bfloat16 if mode == "ours-bf16" else None)
        if mode == "ours-cast-bf16":
            model = model.to(torch.bfloat16)
        embed = model
    else:
        from transformers import Gemma3ForConditionalGeneration

        kwargs = {"dtype": torch.float32} if mode == BASELINE else {}
        model = Gemma3ForConditionalGeneration.from_pretrained(folder, **kwargs).eval()
        if mode == "official-touched":
            with torch.no_grad():
                checksum = sum(float(parameter.amax()) for parameter in model.parameters())  # reads every page, no copy
            assert checksum == checksum

        def embed(pixels):
            return model.get_image_features(pixels).pooler_output.mean(dim=1)

    load_seconds = time.perf_counter() - start
    load_peak = _status_mb("VmHWM")
    parameters = list(model.parameters())
    dtype = parameters[0].dtype
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, 3, 896, 896, generator=generator) * 2 - 1
    with torch.no_grad():
        feature = embed(pixels.to(dtype)).float()
    print(json.dumps({
        "mode": mode,
        "import_rss_mb": import_rss,
        "load_peak_mb": load_peak,
        "peak_rss_mb": _status_mb("VmHWM"),
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "load_seconds": load_seconds,
        "parameters": sum(p.numel() for p in parameters),
        "parameter_mb": sum(p.numel() * p.element_size() for p in parameters) / 2**20,
        "dtype": str(dtype).replace("torch.", ""),
        "feature": feature[0].tolist(),
    }))


def write_folder(folder: Path, args) -> dict:
    """A random Gemma 3 folder (bf16 shards), with a language model that dominates its size."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    config = Gemma3Config.from_dict({
        "model_type": "gemma3",
        "mm_tokens_per_image": 256,
        "text_config": {
            "model_type": "gemma3_text", "hidden_size": args.text_hidden, "intermediate_size": 4 * args.text_hidden,
            "num_hidden_layers": args.text_layers, "num_attention_heads": 8, "num_key_value_heads": 4,
            "head_dim": args.text_hidden // 8, "vocab_size": args.vocab,
        },
        "vision_config": {
            "model_type": "siglip_vision_model", "hidden_size": args.vision_hidden, "intermediate_size": 4 * args.vision_hidden,
            "num_hidden_layers": args.vision_layers, "num_attention_heads": 4, "image_size": 896, "patch_size": 14,
            "vision_use_head": False,
        },
    })
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # transformers zero-initialises the projector and the RMSNorms
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.05)
        model.model.multi_modal_projector.mm_soft_emb_norm.weight.normal_(0.0, 0.1)
    model.to(torch.bfloat16).save_pretrained(folder, max_shard_size="200MB")
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"vision": vision, "projector": projector, "total": total}


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()}-core CPU ({cpu}), {memory:.0f} GB RAM, no GPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--text-hidden", type=int, default=1024)
    parser.add_argument("--text-layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=262144)
    parser.add_argument("--vision-hidden", type=int, default=64)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--folder", help="write the random model here (default: a temporary folder, removed after)")
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return 0

    import torch
    import transformers

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(args.folder or temporary) / "gemma3-scaled"
        counts = write_folder(folder, args)
        shards = sorted(folder.glob("*.safetensors"))
        disk = sum(path.stat().st_size for path in shards)
        results = {}
        for mode in MODES:
            completed = subprocess.run(
                [sys.executable, __file__, "--child", mode, str(folder)], capture_output=True, text=True, check=False,
            )
            if completed.returncode != 0:
                sys.stderr.write(completed.stderr)
                return completed.returncode
            results[mode] = json.loads(completed.stdout.strip().splitlines()[-1])

    baseline, ours, ours_bf16 = results[BASELINE], results["ours"], results["ours-bf16"]

    def above_imports(result) -> float:
        return result["peak_rss_mb"] - result["import_rss_mb"]

    def feature_difference(result) -> float:
        return max(abs(a - b) for a, b in zip(baseline["feature"], result["feature"]))

    lines = [
        "## siglip-gemma3: peak memory, vision-only loader vs whole Gemma 3 (bench/gemma3_memory.py)",
        "",
        f"Machine: {_machine()}; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"Python {platform.python_version()}.",
        f"Scaled random Gemma 3 (bf16 on disk like the Hub's, {disk / 2**20:.0f} MB in {len(shards)} shards): "
        f"vision {args.vision_layers} layers x {args.vision_hidden} wide ({counts['vision'] / 1e6:.1f} M params), "
        f"projector {counts['projector'] / 1e6:.2f} M, language model {args.text_layers} layers x {args.text_hidden} wide, "
        f"vocab {args.vocab} (total {counts['total'] / 1e6:.0f} M params; vision tower + projector "
        f"{100 * (counts['vision'] + counts['projector']) / counts['total']:.1f}% of it, about 10% in the real gemma-3-4b-it).",
        "Each row is a fresh subprocess (same imports) that loads the folder, then embeds one 896x896 image. "
        "RSS in MB from /proc/self/status: after the imports (VmRSS), peak after loading and peak at the end (VmHWM).",
        "",
        f"**Headline, against the faithful baseline (the official code's default float32 load): peak RSS above the "
        f"imports {above_imports(baseline):.0f} MB official vs {above_imports(ours):.0f} MB CREward float32 "
        f"({above_imports(ours) / above_imports(baseline):.3f}x, same features: max abs diff "
        f"{feature_difference(ours):.1e}) and {above_imports(ours_bf16):.0f} MB CREward bf16 "
        f"({above_imports(ours_bf16) / above_imports(baseline):.3f}x, max abs diff {feature_difference(ours_bf16):.1e}); "
        f"whole-process peak {baseline['peak_rss_mb']:.0f} / {ours['peak_rss_mb']:.0f} / {ours_bf16['peak_rss_mb']:.0f} MB.**",
        "",
        "| load | dtype | params | weights (MB) | after imports | peak after load | peak | peak - imports | this / baseline (peak) | this / baseline (peak - imports) | load (s) | max abs feature diff vs baseline |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, name in MODES.items():
        result = results[mode]
        lines.append(
            f"| {name} | {result['dtype']} | {result['parameters'] / 1e6:.1f} M | {result['parameter_mb']:.0f} | "
            f"{result['import_rss_mb']:.0f} | {result['load_peak_mb']:.0f} | {result['peak_rss_mb']:.0f} | "
            f"{above_imports(result):.0f} | {result['peak_rss_mb'] / baseline['peak_rss_mb']:.3f} | "
            f"{above_imports(result) / above_imports(baseline):.3f} | {result['load_seconds']:.1f} | "
            f"{feature_difference(result):.1e} |"
        )
    lines += [
        "",
        "transformers 5.x keeps bf16 weights memory-mapped from the safetensors shards, so an official load "
        "that never reads the language model (CPU, bf16) only becomes resident when its weights are read "
        "(moving the model to a GPU reads them all) or converted (dtype=float32, the official code's default). "
        "bf16 rows differ from the float32 features by bf16 rounding only.",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
