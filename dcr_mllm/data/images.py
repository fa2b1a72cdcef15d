"""Reading images (and their captions) for training and evaluation.

Two sources: webdataset tar shards in the img2dataset layout (``ImageTextShards``, streamed, each
rank and DataLoader worker reading its own shards) and a folder tree of images
(``ImageFolder``, map-style, labels from first-level subfolders). Both decode the same way, by
default to a centre-cropped square, and return images as float tensors in [0, 1], *not*
normalised: each tower applies its own normalisation and augmentations on the device. Training
shards can instead take a random resized crop (upstream DCR's base view). A corrupt image is
skipped and counted, never fatal.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import random
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from braceexpand import braceexpand
from PIL import Image, ImageOps
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from dcr_mllm.data.position import ReadPosition
from dcr_mllm.errors import DcrError

logger = logging.getLogger("dcr_mllm.data")

SHARD_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # in order of preference within a sample
FOLDER_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# webdataset's rule: "dir/000001.jpg" and "dir/000001.txt" belong to the sample "dir/000001".
_MEMBER_NAME = re.compile(r"^((?:.*/|)[^.]+)\.([^/]*)$")
#: (scale range, aspect-ratio range) of a random resized crop
CropRange = tuple[tuple[float, float], tuple[float, float]]


def load_rgb(source: str | Path | bytes) -> Image.Image:
    """Decode an image file (or its bytes) to RGB, turned upright by its EXIF orientation.

    Anything PIL cannot decode raises DcrError, so readers can skip exactly that sample.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return ImageOps.exif_transpose(image).convert("RGB")
    except Exception as err:  # PIL reports bad data with many exception types
        raise DcrError(f"cannot decode image {name}: {err}; re-download or delete it") from err


def to_tensor_square(image: Image.Image, image_size: int) -> torch.Tensor:
    """Resize the shorter side to ``image_size`` (bicubic), centre-crop a square, and return
    a float tensor [3, image_size, image_size] in [0, 1]."""
    return _to_tensor(_square(image, image_size))


def _square(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    width, height = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def random_resized_crop_params(
    height: int, width: int, scale: Sequence[float], ratio: Sequence[float], generator: torch.Generator | None
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` drawing from ``generator``: the same draws,
    in the same order, so a generator seeded like torch's global RNG picks the same box (i, j, h, w).

    Args:
        height: the image's height in pixels.
        width: the image's width in pixels.
        scale: (min, max) of the crop's area as a fraction of the image's.
        ratio: (min, max) of the crop's aspect ratio, width over height.
        generator: the random source; None: torch's global RNG.
    """
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect_ratio = torch.exp(
            torch.empty(1).uniform_(log_ratio[0].item(), log_ratio[1].item(), generator=generator)
        ).item()
        w = round(math.sqrt(target_area * aspect_ratio))
        h = round(math.sqrt(target_area / aspect_ratio))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=generator).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=generator).item()
            return i, j, h, w
    in_ratio = width / height  # ten misses: torchvision's fallback, a central crop
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_square(
    image: Image.Image, size: int, crop: CropRange, generator: torch.Generator | None
) -> Image.Image:
    """torchvision's ``RandomResizedCrop(size, scale, ratio, interpolation=BICUBIC)`` on a PIL image."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    i, j, h, w = random_resized_crop_params(image.height, image.width, crop[0], crop[1], generator)
    return TF.resized_crop(image, i, j, h, w, [size, size], InterpolationMode.BICUBIC)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    width, height = image.size
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(height, width, 3).permute(2, 0, 1).float().div_(255)


def expand_shard_urls(urls: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard paths from a directory (its ``*.tar``), a brace pattern, a path, or a list of these."""
    items = [urls] if isinstance(urls, (str, Path)) else list(urls)
    shards = []
    for item in map(str, items):
        if os.path.isdir(item):
            found = sorted(str(p) for p in Path(item).glob("*.tar"))
            if not found:
                raise DcrError(f"no .tar shards in {item}: point to a directory of webdataset shards")
            shards += found
            continue
        for path in braceexpand(item):
            if not os.path.isfile(path):
                raise DcrError(f"shard {path} does not exist: check the path or brace pattern")
            shards.append(path)
    if not shards:
        raise DcrError("no shards given: pass a directory, a brace pattern or a list of .tar paths")
    return shards


def check_shards(urls: str | Path | Sequence[str | Path]) -> list[str]:
    """The shard paths, each opened and its first sample read and decoded, so a file that is not
    a shard (an HTML error page saved as .tar, an empty archive) is named before a run writes
    anything; later bad samples are skipped and counted as they come."""
    shards = expand_shard_urls(urls)
    for shard in shards:
        try:
            with contextlib.closing(_tar_samples(shard)) as samples:
                first = next(samples, None)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DcrError(
                f"shard {shard} is not a readable tar archive ({err}); re-create it or remove it from data.shards"
            ) from err
        if first is None:
            raise DcrError(
                f"shard {shard} holds no samples (KEY.jpg + KEY.txt members); re-create it or remove it from data.shards"
            )
        key, files = first
        ext = next((e for e in SHARD_IMAGE_EXTENSIONS if e in files), None)
        if ext is None:
            raise DcrError(
                f"shard {shard}: its first sample {key} has no image (members: {', '.join(sorted(files))}; "
                f"expected one of {', '.join(SHARD_IMAGE_EXTENSIONS)}); re-create the shard"
            )
        try:
            load_rgb(files[ext])
        except DcrError as err:
            raise DcrError(f"shard {shard}: its first sample {key}: {err}") from err
    return shards


class ImageTextShards(IterableDataset):
    """Image-caption samples streamed from webdataset shards, split by shard over ranks and workers.

    This rank reads ``shards[rank::world_size]`` and DataLoader worker ``w`` of ``W`` reads every
    ``W``-th of those, so no two readers see the same sample. With ``shuffle``, the shard order
    follows (seed, epoch) and samples pass through a small shuffle buffer seeded by
    (seed, epoch, rank, worker): the same seed and epoch give the same sequence.

    Images are centre-cropped squares, or with ``random_crop`` (scale range, ratio range) random
    resized crops drawn from a generator seeded by (seed, epoch, sample key). ``position``
    (a ``ReadPosition``) lets a resumed run start a reader after the samples it had read.

    Each sample is ``{"key", "image", "caption", "skipped"}`` where ``skipped`` counts the
    undecodable samples this worker dropped since its previous sample; ``collate_image_text``
    sums it so the count survives worker processes. Call ``set_epoch`` before each epoch's
    iterator is created (not compatible with ``persistent_workers=True``, whose copies keep
    their epoch).
    """

    def __init__(
        self,
        urls: str | Path | Sequence[str | Path],
        image_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 128,
        random_crop: CropRange | None = None,
    ):
        if not 0 <= rank < world_size:
            raise DcrError(f"rank {rank} is outside world size {world_size}: use 0 <= rank < world_size")
        self.shards = expand_shard_urls(urls)
        self.image_size = image_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = epoch
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.random_crop = random_crop
        self.position = ReadPosition()  # lets a resumed run pass over samples without decoding them
        self.check_workers(1)

    def check_workers(self, num_workers: int) -> None:
        """Raise unless every rank and each of its DataLoader workers (0 workers: the main
        process reads) gets a shard.

        Iterating checks this too, but inside a worker; call it before building the DataLoader
        for a one-line error in the main process.
        """
        readers = max(num_workers, 1)
        if len(self.shards) < self.world_size * readers:
            raise DcrError(
                f"{len(self.shards)} shards are fewer than {self.world_size} ranks x {readers} "
                f"workers: write at least {self.world_size * readers} shards "
                "or use fewer workers/processes"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self.check_workers(num_workers)
        reader, skip = self.position.begin(worker, num_workers)
        shards = list(self.shards)
        if self.shuffle:
            random.Random(f"shards/{self.seed}/{self.epoch}").shuffle(shards)
        mine = shards[self.rank :: self.world_size][reader::num_workers]
        rng = random.Random(f"samples/{self.seed}/{self.epoch}/{self.rank}/{reader}")
        buffer_size = self.shuffle_buffer if self.shuffle else 1

        # The buffer shuffles undecoded samples (compressed bytes) and each is decoded as it
        # leaves, so the order does not depend on which images decode: a resumed reader passes
        # over its first ``skip`` samples without decoding them. Undecodable samples are counted
        # and the count is handed to the next sample out.
        skipped = 0
        for shard, key, files in _shuffled(self._raw(mine), rng, buffer_size):
            self.position.done += 1
            if self.position.done <= skip:
                continue
            sample = self._decode(shard, key, files)
            if sample is None:
                skipped += 1
                continue
            yield _as_item(sample, skipped)
            skipped = 0

    def _raw(self, shards: list[str]) -> Iterator[tuple[str, str, dict[str, bytes]]]:
        """(shard, key, {extension: bytes}) per sample, undecoded."""
        for shard in shards:
            try:
                for key, files in _tar_samples(shard):
                    yield shard, key, files
            except (tarfile.TarError, OSError) as err:
                logger.warning("shard %s is unreadable, skipping the rest of it: %s", shard, err)

    def _decode(self, shard: str, key: str, files: dict[str, bytes]) -> tuple[str, Image.Image, str] | None:
        """(key, square image, caption), or None for a sample that cannot be used. A random crop
        draws from a generator seeded by (seed, epoch, key), so it does not depend on what was
        decoded before."""
        ext = next((e for e in SHARD_IMAGE_EXTENSIONS if e in files), None)
        if ext is None:
            logger.warning("skipping sample %s in %s: it has no image", key, shard)
            return None
        try:
            image = load_rgb(files[ext])
        except DcrError as err:
            logger.warning("skipping sample %s in %s: %s", key, shard, err)
            return None
        text = files.get("txt", b"").decode("utf-8", errors="replace").strip()
        if self.random_crop is None:
            return key, _square(image, self.image_size), text
        crops = torch.Generator().manual_seed(random.Random(f"crops/{self.seed}/{self.epoch}/{key}").getrandbits(63))
        return key, random_resized_square(image, self.image_size, self.random_crop, crops), text


def _shuffled(stream: Iterator, rng: random.Random, buffer_size: int) -> Iterator:
    """A shuffle buffer: items leave at random once ``buffer_size`` are held (1: in order)."""
    buffer = []
    for item in stream:
        buffer.append(item)
        if len(buffer) >= buffer_size:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer


def _tar_samples(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream a tar, grouping consecutive members that share a key into {extension: bytes}."""
    key, files = None, {}
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            match = _MEMBER_NAME.match(member.name) if member.isfile() else None
            if match is None:
                continue
            if match.group(1) != key:
                if files:
                    yield key, files
                key, files = match.group(1), {}
            files[match.group(2).lower()] = tar.extractfile(member).read()
    if files:
        yield key, files


def _as_item(sample: tuple[str, Image.Image, str], skipped: int) -> dict:
    key, image, text = sample
    return {"key": key, "image": _to_tensor(image), "caption": text, "skipped": skipped}


class ImageFolder(Dataset):
    """Every image under ``root`` (sorted paths), labelled by its first-level subfolder.

    ``classes`` lists the subfolder names in sorted order and ``label`` indexes it (-1 for an
    image directly under ``root``); a sidecar ``<name>.txt`` gives the caption. A corrupt image
    comes back as None, which ``collate_skip_none`` drops and counts.
    """

    def __init__(self, root: str | Path, image_size: int):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DcrError(f"image folder {self.root} does not exist: check the path")
        self.paths = sorted(
            p for p in self.root.rglob("*") if p.suffix.lower() in FOLDER_IMAGE_EXTENSIONS and p.is_file()
        )
        if not self.paths:
            raise DcrError(f"no images ({' '.join(FOLDER_IMAGE_EXTENSIONS)}) under {self.root}: check the path")
        self.image_size = image_size
        relative = [p.relative_to(self.root) for p in self.paths]
        self.classes = sorted({rel.parts[0] for rel in relative if len(rel.parts) > 1})
        index = {name: i for i, name in enumerate(self.classes)}
        self.labels = [index[rel.parts[0]] if len(rel.parts) > 1 else -1 for rel in relative]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict | None:
        path = self.paths[index]
        try:
            image = load_rgb(path)
        except DcrError as err:
            logger.warning("skipping image %s: %s", path, err)
            return None
        sidecar = path.with_suffix(".txt")
        return {
            "key": path.relative_to(self.root).with_suffix("").as_posix(),
            "image": to_tensor_square(image, self.image_size),
            "caption": sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else "",
            "skipped": 0,
            "label": self.labels[index],
        }


def collate_image_text(samples: list[dict]) -> dict:
    """Batch samples: stacked images, lists of keys and captions, summed ``skipped``, labels if any.

    A batch with no samples (all of them corrupt) has empty lists and a [0] image tensor.
    """
    batch = {
        "key": [s["key"] for s in samples],
        "image": torch.stack([s["image"] for s in samples]) if samples else torch.empty(0),
        "caption": [s["caption"] for s in samples],
        "skipped": sum(s["skipped"] for s in samples),
    }
    if samples and "label" in samples[0]:
        batch["label"] = torch.tensor([s["label"] for s in samples])
    return batch


def collate_skip_none(samples: list[dict | None]) -> dict:
    """``collate_image_text`` for map-style datasets, whose corrupt items are None: drop and count them."""
    kept = [s for s in samples if s is not None]
    batch = collate_image_text(kept)
    batch["skipped"] += len(samples) - len(kept)
    return batch
