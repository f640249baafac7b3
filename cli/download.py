"""Fetch a backbone's weights (and the official head for it) into the models folder.

Nothing is ever downloaded at import or scoring time: this command is CREward's only network
access. Offline, it prints exactly what to fetch by hand and where to put it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..models.backbones.registry import available_backbones, get_spec

logger = logging.getLogger(__name__)

PROJECT_PAGE = "https://han-j-y.github.io/creward_prj/"
OFFICIAL_HEAD_REPO = "jhan/CREward"  # official reward heads: <backbone>/reward_head_best.ckpt


def register(subparsers) -> None:
    parser = subparsers.add_parser("download", description=__doc__)
    parser.add_argument("name", choices=available_backbones(), help="backbone to fetch")
    parser.add_argument("--dir", help="models folder (default: $CREWARD_MODELS_DIR or ~/.cache/creward)")
    parser.add_argument("--head-repo", default=OFFICIAL_HEAD_REPO, help=f"Hugging Face repo holding the head checkpoints (default: the official {OFFICIAL_HEAD_REPO})")
    parser.add_argument("--head-file", help="head file inside --head-repo (default: <backbone>/reward_head_best.ckpt)")
    parser.add_argument("--no-head", action="store_true", help="fetch only the backbone")
    parser.add_argument("--token", help="Hugging Face token (gated models such as google/gemma-3-4b-it need one); env HF_TOKEN")
    parser.set_defaults(func=run)


def manual_instructions(name: str, folder: Path) -> str:
    spec = get_spec(name)
    target = folder / "backbones" / spec.default_names[0]
    if spec.hf_repo:
        fetch = f"the Hugging Face repo {spec.hf_repo} (all *.safetensors + config.json)"
    elif spec.download_url:
        fetch = spec.download_url
    else:
        fetch = spec.weights_hint
    return (
        f"To install {name!r} by hand: download {fetch} and put it at {target}\n"
        f"  (expected: {spec.weights_hint}).\n"
        f"Then get the CREward head https://huggingface.co/{OFFICIAL_HEAD_REPO}/blob/main/{name}/reward_head_best.ckpt\n"
        f"  (official release, see {PROJECT_PAGE}) and convert it with\n"
        f"  creward convert reward_head_best.ckpt --backbone {name} -o {folder / f'creward_{name}.safetensors'}"
    )


def run(args) -> int:
    from ..models.locate import default_download_dir

    spec = get_spec(args.name)
    folder = Path(args.dir) if args.dir else default_download_dir()
    target = folder / "backbones" / spec.default_names[0]
    try:
        if spec.hf_repo:
            try:
                from huggingface_hub import snapshot_download
            except ImportError:
                logger.error("downloading needs huggingface_hub: pip install huggingface_hub")
                print(manual_instructions(args.name, folder))
                return 1
            patterns = ["config.json", "*.safetensors", "model.safetensors.index.json"]
            snapshot_download(spec.hf_repo, local_dir=str(target), allow_patterns=patterns, token=args.token)
        elif spec.download_url:
            from torch.hub import download_url_to_file

            target.parent.mkdir(parents=True, exist_ok=True)
            download_url_to_file(spec.download_url, str(target), progress=True)
        else:
            print(manual_instructions(args.name, folder))
            return 1
        print(f"backbone {args.name} -> {target}")
        if not args.no_head:
            from huggingface_hub import hf_hub_download

            from ..models.head import load_head, save_head

            head_file = args.head_file or f"{args.name}/reward_head_best.ckpt"
            checkpoint = hf_hub_download(args.head_repo, head_file, token=args.token)
            head, info = load_head(checkpoint, args.name)  # weights-only read
            output = save_head(head, folder / f"creward_{args.name}.safetensors", args.name, info.axes, {"creward.source": f"{args.head_repo}/{head_file}"})
            print(f"head -> {output}")
        return 0
    except OSError as error:  # no network, DNS failure, refused connection, disk full
        logger.error("download failed: %s", error)
        print(manual_instructions(args.name, folder))
        return 1
    except Exception as error:  # huggingface_hub raises its own errors offline (LocalEntryNotFoundError, HTTP errors)
        if type(error).__module__.startswith(("huggingface_hub", "requests", "urllib3", "httpx")):
            logger.error("download failed: %s", error)
            print(manual_instructions(args.name, folder))
            return 1
        raise
