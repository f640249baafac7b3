"""``creward train features``: the feature cache — the frozen backbone runs once per image.

Usage::

    creward train features PAIRS_DIR... --backbone NAME --backbone-weights P --cache DIR
        [--batch-size 8] [--device auto] [--dtype fp32] [--workers 2]

Cache folder layout::

    DIR/cache.json                   manifest: backbone, weights identity, feature width, dtype
    DIR/features-00000.safetensors   shards: one float32 [D] tensor per image, keyed by the
    DIR/features-00001.safetensors   sha256 of the image file's bytes; each shard's metadata
    ...                              repeats backbone and weights identity
    DIR/hashes.json                  path → (size, mtime, sha256), so unchanged files are not re-read

Images are keyed by content, so renamed or duplicated files are computed once, and a rerun
computes only what is missing (a killed run keeps every shard it finished; shards are written
every ``--shard-size`` images, atomically). Pixels go through
``creward.models.file_scoring.iter_preprocessed`` (background decoding, the official
preprocessing). A cache belongs to one backbone and one set of backbone weights: opening it for
another is an error naming the file. The weights identity is a sha256 over the weight files'
sizes and three 1 MiB samples of each (start, middle, end) — cheap for multi-GB checkpoints,
unchanged by copying or moving the files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..cli.arguments import check_device, device_name, non_negative_int, positive_int
from ..models.errors import CREwardError, ImageError, WeightsError
from ..models.identity import weights_identity  # noqa: F401  (re-exported: the cache's weights identity)
from ..models.output_files import atomic_output, write_text_atomically

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CACHE_FORMAT = "1"
MANIFEST_NAME = "cache.json"
HASH_INDEX_NAME = "hashes.json"
SHARD_PATTERN = re.compile(r"^features-(\d+)\.safetensors$")
CACHE_DIR_ENV = "CREWARD_CACHE_DIR"


class FeatureCacheError(CREwardError):
    """A feature cache cannot be used (another backbone, damaged shard, missing features)."""


# -- identities ----------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes; ``ImageError`` naming the file when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise ImageError("image file not found", path) from None
    except OSError as error:
        raise ImageError(f"cannot read the image file ({error.strerror or error})", path) from None
    return digest.hexdigest()


def default_cache_dir(backbone: str, weights_id: str) -> Path:
    """``$CREWARD_CACHE_DIR/features/<backbone>-<id>`` (default root ``~/.cache/creward``)."""
    root = Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "creward")
    return root / "features" / f"{backbone}-{weights_id.split(':')[-1][:12]}"


# -- the cache -----------------------------------------------------------------------------
class FeatureCache:
    """Features of one backbone (+ weights) keyed by image sha256, in safetensors shards.

    Opening checks ``cache.json`` and every shard's metadata against ``backbone`` and
    ``weights_id`` (``None`` skips the weights check) and raises :class:`FeatureCacheError`
    naming the file on a mismatch. The manifest is written with the first shard.
    """

    def __init__(self, folder: str | os.PathLike, backbone: str, weights_id: str | None, weights_path: str | None = None):
        self.folder = Path(folder)
        self.backbone = backbone
        self.weights_id = weights_id
        self.weights_path = weights_path
        self.feature_dim: int | None = None
        self.dtype: str | None = None
        self._features: dict[str, torch.Tensor] = {}
        self._hash_index: dict[str, list] = {}
        if self.folder.exists() and not self.folder.is_dir():
            raise FeatureCacheError(f"feature cache {self.folder} is a file; expected a folder")
        self._open()

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST_NAME

    def _shards(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(path for path in self.folder.iterdir() if SHARD_PATTERN.match(path.name))

    def _check_identity(self, backbone: str | None, weights_id: str | None, where: Path) -> None:
        if backbone != self.backbone:
            raise FeatureCacheError(
                f"{where} holds features of backbone {backbone!r}, not {self.backbone!r}: features of different "
                f"backbones cannot be mixed; use another --cache folder for {self.backbone!r}"
            )
        if self.weights_id is not None and weights_id != self.weights_id:
            raise FeatureCacheError(
                f"{where} holds features of other {backbone!r} weights (identity {weights_id}, these weights are "
                f"{self.weights_id}{f' at {self.weights_path}' if self.weights_path else ''}); use another --cache folder"
            )

    def _open(self) -> None:
        shards = self._shards()
        if not self.manifest_path.is_file():
            if shards:
                raise FeatureCacheError(f"{self.folder} holds feature shards but no {MANIFEST_NAME}; it is not a CREward feature cache")
            return
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise FeatureCacheError(f"{self.manifest_path} is not a readable feature-cache manifest: {error}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
            raise FeatureCacheError(f"{self.manifest_path}: unknown feature-cache format {manifest.get('format') if isinstance(manifest, dict) else manifest!r}; expected {CACHE_FORMAT}")
        self._check_identity(manifest.get("backbone"), manifest.get("weights_id"), self.manifest_path)
        if self.weights_id is None:
            self.weights_id = manifest.get("weights_id")
        self.feature_dim = int(manifest["feature_dim"])
        self.dtype = manifest.get("dtype")
        from safetensors import SafetensorError, safe_open

        for shard in shards:
            try:
                with safe_open(str(shard), framework="pt") as handle:
                    metadata = handle.metadata() or {}
                    self._check_identity(metadata.get("creward.backbone"), metadata.get("creward.weights_id"), shard)
                    for key in handle.keys():
                        tensor = handle.get_tensor(key)
                        if tuple(tensor.shape) != (self.feature_dim,):
                            raise FeatureCacheError(f"{shard}: feature {key[:12]}… has shape {tuple(tensor.shape)}, expected ({self.feature_dim},)")
                        self._features[key] = tensor
            except (SafetensorError, OSError, ValueError) as error:
                raise FeatureCacheError(f"{shard} is not a readable feature shard (delete it to recompute its images): {error}") from None
        index_path = self.folder / HASH_INDEX_NAME
        if index_path.is_file():
            try:
                self._hash_index = json.loads(index_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                logger.warning("%s is unreadable; image hashes will be recomputed", index_path)
                self._hash_index = {}

    def __contains__(self, key: str) -> bool:
        return key in self._features

    def __len__(self) -> int:
        return len(self._features)

    # -- hashing -----------------------------------------------------------------------------
    def hash_files(self, paths: Sequence[Path], progress: bool = False, workers: int = 4) -> list[str]:
        """sha256 of each file, reusing ``hashes.json`` for files whose size and mtime are unchanged."""
        results: list[str | None] = [None] * len(paths)
        todo = []
        for number, path in enumerate(paths):
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                raise ImageError("image file not found", path) from None
            known = self._hash_index.get(str(Path(path).resolve()))
            if known and known[0] == stat.st_size and known[1] == stat.st_mtime_ns:
                results[number] = known[2]
            else:
                todo.append((number, path, stat))
        if todo:
            from tqdm.auto import tqdm

            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="creward-hash") as pool, tqdm(
                total=len(todo), desc="hashing images", unit="img", file=sys.stderr, disable=None if progress else True
            ) as bar:
                for (number, path, stat), digest in zip(todo, pool.map(lambda item: file_sha256(item[1]), todo)):
                    results[number] = digest
                    self._hash_index[str(Path(path).resolve())] = [stat.st_size, stat.st_mtime_ns, digest]
                    bar.update(1)
            if self.folder.is_dir():
                self._save_hash_index()
        return results  # type: ignore[return-value]

    def _save_hash_index(self) -> None:
        path = self.folder / HASH_INDEX_NAME
        write_text_atomically(path, json.dumps(self._hash_index))

    # -- reading and writing -----------------------------------------------------------------
    def lookup(self, keys: Sequence[str], paths: Sequence[Path] | None = None) -> torch.Tensor:
        """Stacked features ``[N, D]`` for image hashes; errors naming images that are missing."""
        missing = [number for number, key in enumerate(keys) if key not in self._features]
        if missing:
            names = [str(paths[number]) if paths is not None else keys[number] for number in missing[:5]]
            raise FeatureCacheError(
                f"{len(missing)} image(s) have no features in {self.folder} (e.g. {', '.join(names)}); "
                f"run `creward train features` for them first"
            )
        import torch

        if not keys:
            return torch.zeros(0, self.feature_dim or 0)
        return torch.stack([self._features[key] for key in keys])

    def features_for(self, paths: Sequence[Path]) -> torch.Tensor:
        """Features ``[N, D]`` of image files (hashed through ``hashes.json``)."""
        return self.lookup(self.hash_files(list(paths)), list(paths))

    def add(self, features: dict[str, torch.Tensor], dtype: str) -> Path | None:
        """Write new features as one shard (atomically); the first write creates the manifest."""
        features = {key: value for key, value in features.items() if key not in self._features}
        if not features:
            return None
        from safetensors.torch import save_file

        width = {int(value.shape[-1]) for value in features.values()}
        if len(width) != 1 or (self.feature_dim is not None and width != {self.feature_dim}):
            raise FeatureCacheError(f"features of width {sorted(width)} cannot go into {self.folder} (width {self.feature_dim})")
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.feature_dim is None:
            self.feature_dim = width.pop()
            self.dtype = dtype
            manifest = {
                "format": CACHE_FORMAT,
                "backbone": self.backbone,
                "weights_id": self.weights_id,
                "weights_path": self.weights_path,
                "feature_dim": self.feature_dim,
                "dtype": dtype,
                "key": "sha256 of the image file bytes",
            }
            write_text_atomically(self.manifest_path, json.dumps(manifest, indent=1))
        elif dtype != self.dtype:
            logger.warning("%s holds %s features; adding %s ones (values differ slightly between precisions)", self.folder, self.dtype, dtype)
        numbers = [int(SHARD_PATTERN.match(path.name).group(1)) for path in self._shards()]
        shard = self.folder / f"features-{(max(numbers) + 1 if numbers else 0):05d}.safetensors"
        metadata = {
            "creward.backbone": self.backbone,
            "creward.weights_id": str(self.weights_id),
            "creward.feature_dim": str(self.feature_dim),
            "creward.dtype": dtype,
            "creward.cache_format": CACHE_FORMAT,
        }
        tensors = {key: value.detach().float().cpu().contiguous() for key, value in features.items()}
        with atomic_output(shard) as temporary:
            save_file(tensors, str(temporary), metadata=metadata)
        self._features.update(tensors)
        self._save_hash_index()
        return shard


# -- computing -----------------------------------------------------------------------------
@dataclass
class CacheSummary:
    """What :func:`cache_features` did."""

    cache: FeatureCache
    images: int = 0
    unique: int = 0
    cached: int = 0  # unique images already in the cache
    computed: int = 0
    seconds: float = 0.0
    shards_written: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"features: {self.images} image(s), {self.unique} unique, {self.cached} already cached, {self.computed} computed "
            f"in {self.seconds:.1f} s -> {self.cache.folder} (backbone {self.cache.backbone}, "
            f"{self.cache.feature_dim}-wide, {self.cache.dtype}, weights {self.cache.weights_id})"
        )


def open_cache(
    backbone: str,
    backbone_weights: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    weights_id: str | None = None,
    require_weights: bool = True,
) -> tuple[FeatureCache, Path | None]:
    """Resolve the backbone weights (``creward.models.locate`` order), fingerprint them and open
    the cache (default :func:`default_cache_dir`). With ``require_weights=False``, an explicit
    ``cache_dir`` can be opened when no weights were given and none are found (identity
    unchecked, a warning says so; nothing can then be computed)."""
    from ..models.backbones.registry import get_spec
    from ..models.locate import find_backbone_weights

    spec = get_spec(backbone)
    weights_path = None
    if weights_id is None:
        try:
            weights_path = find_backbone_weights(spec.name, backbone_weights)
        except WeightsError:
            if require_weights or cache_dir is None or backbone_weights is not None:
                raise
            logger.warning("no %s weights found: using %s without checking which weights its features came from", spec.name, cache_dir)
        else:
            weights_id = weights_identity(weights_path)
    folder = Path(cache_dir) if cache_dir else default_cache_dir(spec.name, weights_id)
    return FeatureCache(folder, spec.name, weights_id, str(weights_path) if weights_path else None), weights_path


def cache_features(
    images: Sequence[str | os.PathLike],
    cache: FeatureCache,
    backbone_weights: str | os.PathLike | None = None,
    *,
    batch_size: int = 8,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = "fp32",
    workers: int = 2,
    shard_size: int = 1024,
    progress: bool = True,
    backbone_module=None,
) -> CacheSummary:
    """Compute and store the features of the images not yet in ``cache``.

    The backbone (``backbone_module``, or the registry backbone ``cache.backbone`` loaded from
    ``backbone_weights``) is only loaded when something is missing. Unreadable images do not
    stop the others: their features are stored, then an ``ImageError`` names every bad file.
    """
    import torch
    from tqdm.auto import tqdm

    from ..models.backbones.registry import get_spec, load_backbone
    from ..models.device import resolve_device, resolve_dtype
    from ..models.file_scoring import iter_preprocessed

    if batch_size <= 0 or shard_size <= 0:
        raise ValueError(f"batch_size and shard_size should be positive, got {batch_size} and {shard_size}")
    started = time.perf_counter()
    paths = [Path(path) for path in images]
    keys = cache.hash_files(paths, progress=progress)
    first_path: dict[str, Path] = {}
    for key, path in zip(keys, paths):
        first_path.setdefault(key, path)
    todo = [(key, path) for key, path in first_path.items() if key not in cache]
    summary = CacheSummary(cache, images=len(paths), unique=len(first_path), cached=len(first_path) - len(todo))
    if not todo:
        summary.seconds = time.perf_counter() - started
        return summary

    spec = get_spec(cache.backbone)
    resolved_device = resolve_device(device)
    compute_dtype = resolve_dtype(dtype, resolved_device)
    dtype_name = str(compute_dtype).replace("torch.", "")
    if backbone_module is None:
        if backbone_weights is None:
            raise WeightsError(f"{len(todo)} image(s) are not in {cache.folder} and no {spec.name!r} backbone weights were given to compute them")
        logger.info("loading backbone %s from %s", spec.name, backbone_weights)
        backbone_module = load_backbone(spec.name, backbone_weights, dtype=compute_dtype)  # built in its compute dtype
    backbone_module = backbone_module.to(device=resolved_device, dtype=compute_dtype).eval()

    pending: dict[str, torch.Tensor] = {}
    batch: list[tuple[str, torch.Tensor]] = []
    failures: list[str] = []

    def run_batch() -> None:
        if not batch:
            return
        pixels = torch.stack([item[1] for item in batch]).to(device=resolved_device, dtype=compute_dtype)
        with torch.inference_mode():
            output = backbone_module(pixels).float().cpu()
        for (key, _), row in zip(batch, output):
            pending[key] = row.clone()
        summary.computed += len(batch)
        bar.update(len(batch))
        batch.clear()

    def write_shard() -> None:
        shard = cache.add(dict(pending), dtype_name)
        if shard is not None:
            summary.shards_written.append(str(shard))
        pending.clear()

    todo_paths = [path for _, path in todo]
    with tqdm(total=len(todo), desc=f"features ({spec.name})", unit="img", file=sys.stderr, disable=None if progress else True) as bar:
        try:
            for number, pixels, error in iter_preprocessed(todo_paths, spec.preprocessing, workers=workers, prefetch=max(2 * batch_size, 4)):
                if pixels is None:
                    failures.append(str(error))
                    bar.update(1)
                    continue
                batch.append((todo[number][0], pixels))
                if len(batch) >= batch_size:
                    run_batch()
                if len(pending) >= shard_size:
                    write_shard()
            run_batch()
        finally:
            write_shard()  # keep what was computed, even on an error or Ctrl-C
    summary.seconds = time.perf_counter() - started
    if failures:
        raise ImageError(f"{len(failures)} image(s) could not be read (the other features were cached): " + "; ".join(failures[:5]) + (" ..." if len(failures) > 5 else ""))
    return summary


# -- CLI -----------------------------------------------------------------------------------
def add_backbone_arguments(parser: argparse.ArgumentParser, backbone_required: bool = True, cache_required: bool = False) -> None:
    """Backbone / cache / compute arguments shared by the training steps."""
    from ..models.backbones.registry import available_backbones

    group = parser.add_argument_group("backbone and feature cache")
    group.add_argument("--backbone", required=backbone_required, choices=available_backbones(), help="backbone name")
    group.add_argument("--backbone-weights", metavar="P", help="backbone weights (Hugging Face folder or file); default: $CREWARD_BACKBONE_WEIGHTS or the model folders")
    group.add_argument(
        "--cache", metavar="DIR", required=cache_required,
        help="feature cache folder" + ("" if cache_required else f" (default: ${CACHE_DIR_ENV} or ~/.cache/creward, then /features/<backbone>-<weights id>)"),
    )
    group.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="images per backbone forward (default 8)")
    group.add_argument("--device", type=device_name, default="auto", help="auto (a CUDA GPU if there is one, else Apple MPS, else the CPU), cpu, cuda, cuda:N or mps (default auto)")
    group.add_argument("--dtype", default="fp32", choices=["auto", "fp32", "fp16", "bf16"], help="backbone precision for features (default fp32)")
    group.add_argument("--workers", type=non_negative_int, default=2, metavar="N", help="image decoding threads; 0 decodes in the main thread (default 2)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "features",
        help="run the frozen backbone once per pair image and cache the features",
        description="Compute backbone features of every image in the pairs folders into a resumable cache "
        "(safetensors shards keyed by image sha256). Rerunning computes only new images.",
    )
    parser.add_argument("pairs_dirs", nargs="+", metavar="PAIRS_DIR", help="folders of pair_{idx:04d}_0.png / pair_{idx:04d}_1.png")
    add_backbone_arguments(parser, cache_required=True)
    parser.add_argument("--shard-size", type=positive_int, default=1024, metavar="N", help="features per shard file, i.e. how often progress is saved (default 1024)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .pairs import find_pair_images

    check_device(args.device)
    images = []
    for folder in args.pairs_dirs:
        for pair in find_pair_images(folder):
            images += [pair.image_0, pair.image_1]
    cache, weights_path = open_cache(args.backbone, args.backbone_weights, args.cache)
    summary = cache_features(
        images, cache, weights_path, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
        workers=args.workers, shard_size=args.shard_size, progress=not args.no_progress,
    )
    print(summary.describe())
    return 0
