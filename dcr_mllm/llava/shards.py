"""Stream safetensors checkpoints tensor by tensor: read headers, copy tensors as raw bytes, write shards.

A LLaVA checkpoint is tens of GB, while swapping its vision tower or converting its layout changes
a few hundred MB of it. Only headers are parsed; a tensor that does not change is copied as its
raw byte range (in the kernel, with ``os.copy_file_range``), so it is byte-identical by
construction, memory stays at about one changed tensor, and the time stays close to a file copy.

Checking the result must not cost much more than the copy itself: ``write_shard`` returns each
tensor's xxh3-128 digest (of the source's bytes, or of the bytes computed in memory), so reading
the output back once (``StoredTensor.digest``) verifies it, without comparing the sources again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import mmap
import os
import shutil
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import xxhash

from dcr_mllm.errors import DcrError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
CODES = {dtype: code for code, dtype in DTYPES.items()}
CHUNK = 16 << 20
#: bytes hashed through one memory map: large enough to be fast, small enough to keep RSS low
WINDOW = 64 << 20
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
BIN_INDEX_NAME = "pytorch_model.bin.index.json"
BIN_SINGLE_NAME = "pytorch_model.bin"


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's bytes lie inside a safetensors file."""

    name: str
    dtype: str  # safetensors dtype code, e.g. "F16"
    shape: tuple[int, ...]
    path: Path
    start: int  # absolute byte offsets in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    def load(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor in memory of its own, cast to ``dtype`` if given, converted straight from the file's pages."""
        dtype = dtype or DTYPES[self.dtype]
        if not self.nbytes:
            return torch.empty(self.shape, dtype=dtype)
        with self._mapped(self.start, self.end) as data:
            mapped = torch.frombuffer(data, dtype=torch.uint8).view(DTYPES[self.dtype]).reshape(self.shape)
            tensor = mapped.to(dtype, copy=True)
            del mapped  # a tensor on the map must be gone before the map closes
        return tensor

    def digest(self) -> bytes:
        """xxh3-128 of the tensor's bytes, hashed from the file's pages a window at a time (the
        hashing releases the GIL, so shards are hashed side by side)."""
        hasher = xxhash.xxh3_128()
        for start in range(self.start, self.end, WINDOW):
            with self._mapped(start, min(start + WINDOW, self.end)) as data:
                hasher.update(data)
        return hasher.digest()

    @contextlib.contextmanager
    def _mapped(self, start: int, end: int):
        """Bytes [start, end) of the file (not empty) through a private memory map: nothing is copied,
        and the pages leave the process's memory when the map closes."""
        with open(self.path, "rb") as f:
            if os.fstat(f.fileno()).st_size < self.end:
                raise DcrError(f"{self.path} ends inside tensor {self.name}; the file is truncated")
            offset = start - start % mmap.ALLOCATIONGRANULARITY
            with (
                mmap.mmap(f.fileno(), end - offset, offset=offset, access=mmap.ACCESS_COPY) as pages,
                memoryview(pages) as view,
                view[start - offset :] as data,
            ):
                yield data


@dataclass(frozen=True)
class Cast:
    """A stored tensor written in another dtype (a tower's float32 weights into a float16 checkpoint)."""

    source: StoredTensor
    dtype: torch.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source.shape

    def load(self) -> torch.Tensor:
        return self.source.load(self.dtype)


Source = StoredTensor | Cast | torch.Tensor


def read_header(path: str | Path) -> tuple[dict[str, StoredTensor], dict[str, str]]:
    """The tensors of one safetensors file (name -> location) and its ``__metadata__``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError) as err:
        raise DcrError(f"{path} is not a readable safetensors file ({err})") from err
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + length
    tensors = {
        name: StoredTensor(
            name,
            info["dtype"],
            tuple(info["shape"]),
            path,
            base + info["data_offsets"][0],
            base + info["data_offsets"][1],
        )
        for name, info in header.items()
    }
    return tensors, metadata


def weight_files(directory: Path) -> list[str]:
    """The safetensors files of a ``save_pretrained`` directory: the index's shards, or the single file."""
    index = directory / INDEX_NAME
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    if (directory / SINGLE_NAME).is_file():
        return [SINGLE_NAME]
    return sorted(p.name for p in directory.glob("*.safetensors"))


def nbytes(source: Source) -> int:
    """Bytes a tensor takes in a safetensors file."""
    if isinstance(source, StoredTensor):
        return source.nbytes
    return source.dtype.itemsize * numel(source.shape)


def numel(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def human_size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} B"


def describe(source: Source) -> tuple[str, tuple[int, ...], int]:
    """(safetensors dtype code, shape, bytes) of a tensor as it will be written."""
    if isinstance(source, StoredTensor):
        return source.dtype, source.shape, source.nbytes
    return CODES[source.dtype], tuple(source.shape), nbytes(source)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


class _RangeCopier:
    """Copies byte ranges of source files to the end of an output file, merging adjacent ranges."""

    def __init__(self, out_fd: int):
        self.out_fd = out_fd
        self.fds: dict[Path, int] = {}
        self.pending: tuple[Path, int, int] | None = None
        self.in_kernel = True

    def add(self, path: Path, start: int, end: int) -> None:
        if self.pending and self.pending[0] == path and self.pending[2] == start:
            self.pending = (path, self.pending[1], end)
            return
        self.flush()
        self.pending = (path, start, end)

    def flush(self) -> None:
        if self.pending is None:
            return
        path, start, end = self.pending
        self.pending = None
        if path not in self.fds:
            self.fds[path] = os.open(path, os.O_RDONLY)
        src = self.fds[path]
        while start < end:
            if self.in_kernel:
                try:
                    copied = os.copy_file_range(src, self.out_fd, end - start, start)
                except OSError as err:  # another filesystem or an old kernel: copy through user space
                    if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                        raise
                    self.in_kernel = False
                    continue
            else:
                chunk = os.pread(src, min(CHUNK, end - start), start)
                _write_all(self.out_fd, memoryview(chunk))
                copied = len(chunk)
            if copied == 0:
                raise DcrError(f"{path} ended before byte {end}; the file is truncated")
            start += copied

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


def write_shard(
    path: str | Path, tensors: list[tuple[str, Source]], metadata: dict[str, str] | None = None
) -> list[bytes]:
    """Write a safetensors file from stored byte ranges and in-memory tensors, in the given order.

    Returns each tensor's digest, what reading the file back must find: a stored tensor's is taken
    from its source file, an in-memory one's from the bytes written. Only one changed tensor is in
    memory at a time.

    Args:
        path: the safetensors file to write (replaced if it exists).
        tensors: ``(name, source)`` per tensor, in file order: a stored byte range, a cast of one, or a tensor.
        metadata: the header's ``__metadata__`` (e.g. ``{"format": "pt"}``); None: none.
    """
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, source in tensors:
        dtype, shape, size = describe(source)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    copier = _RangeCopier(fd)
    digests = []
    try:
        _write_all(fd, memoryview(struct.pack("<Q", len(blob)) + blob))
        for _, source in tensors:
            if isinstance(source, StoredTensor):
                copier.add(source.path, source.start, source.end)
                digests.append(source.digest())
                continue
            copier.flush()
            data = memoryview(tensor_bytes(source.load() if isinstance(source, Cast) else source))
            _write_all(fd, data)
            digests.append(xxhash.xxh3_128(data).digest())
        copier.flush()
    finally:
        copier.close()
        os.close(fd)
    return digests


def parallel(function, items: list) -> list:
    """``[function(item) for item in items]`` on a few threads: copies, reads, casts and writes
    release the GIL, so shards are processed side by side."""
    workers = max(1, min(len(items), os.cpu_count() or 1, 4))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(function, items))


def tensor_bytes(tensor: torch.Tensor):
    """A tensor's bytes as a buffer, without a copy when it is contiguous."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()


def same_bytes(a: StoredTensor, b: StoredTensor) -> bool:
    """Whether two stored tensors have the same dtype, shape and bytes."""
    if (a.dtype, a.shape, a.nbytes) != (b.dtype, b.shape, b.nbytes):
        return False
    return _same_range(a.path, a.start, b.path, b.start, a.nbytes)


def same_file(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes."""
    size = a.stat().st_size
    return size == b.stat().st_size and _same_range(a, 0, b, 0, size)


def _same_range(path_a: Path, start_a: int, path_b: Path, start_b: int, length: int) -> bool:
    """Compare ``length`` bytes of two files, a chunk at a time."""
    full_a, full_b = bytearray(min(CHUNK, length)), bytearray(min(CHUNK, length))
    with open(path_a, "rb", buffering=0) as fa, open(path_b, "rb", buffering=0) as fb:
        fa.seek(start_a)
        fb.seek(start_b)
        while length:
            n = min(CHUNK, length)
            # whole bytearrays compare with memcmp; a slice or memoryview would compare byte by byte
            buf_a, buf_b = (full_a, full_b) if n == len(full_a) else (bytearray(n), bytearray(n))
            if fa.readinto(buf_a) != n or fb.readinto(buf_b) != n or buf_a != buf_b:
                return False
            length -= n
    return True


def pickled_weight_files(directory: Path) -> list[str]:
    """The .bin weight shards of a ``save_pretrained`` directory (its .bin index's, or the single
    file), when it has no safetensors weights; [] otherwise."""
    if weight_files(directory):
        return []
    index = directory / BIN_INDEX_NAME
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return [BIN_SINGLE_NAME] if (directory / BIN_SINGLE_NAME).is_file() else []


def convert_pickled_checkpoint(src: Path, out: Path) -> list[str]:
    """Write ``src`` into ``out`` with its .bin weight shards as safetensors shards (the names and
    index ``save_pretrained`` gives them) and every other file copied; returns the shards converted.

    Each shard is read with the restricted unpickler, memory-mapped, and written tensor by tensor,
    so memory stays near one shard's touched pages, never the whole model.
    """
    shards = pickled_weight_files(src)
    names = {
        shard: shard.replace("pytorch_model", "model", 1).removesuffix(".bin") + ".safetensors" for shard in shards
    }
    weight_map, total = {}, 0
    for shard in shards:
        try:
            state = torch.load(src / shard, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:  # a legacy (non-zip) pickle cannot be memory-mapped
            state = torch.load(src / shard, map_location="cpu", weights_only=True)
        except Exception as err:  # the restricted unpickler refuses many things, each its own type
            raise DcrError(
                f"{src / shard} cannot be read as a weights-only PyTorch pickle ({err}); re-download it"
            ) from err
        bad = next((key for key, value in state.items() if not isinstance(value, torch.Tensor)), None)
        if bad is not None:
            raise DcrError(f"{src / shard} holds {bad!r}, which is not a tensor; it is not a weight shard")
        write_shard(out / names[shard], list(state.items()), {"format": "pt"})
        weight_map.update(dict.fromkeys(state, names[shard]))
        total += sum(nbytes(tensor) for tensor in state.values())
        del state
    if len(shards) > 1 or (src / BIN_INDEX_NAME).is_file():
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / INDEX_NAME).write_text(json.dumps(index, indent=2))
    for item in src.iterdir():
        if item.name in (*shards, BIN_INDEX_NAME):
            continue
        if item.is_dir():
            shutil.copytree(item, out / item.name, symlinks=True)
        else:
            shutil.copy2(item, out / item.name)
    return shards
