"""Flat float32 files on flash, mapped into memory, with hints that tell the kernel which pages to read or drop.

Parameter sharding keeps every full-size training tensor (master weights, AdamW moments, accumulated
gradients) in such a file. The mapping is ``MAP_SHARED``: a tensor view onto it is the file's page
cache itself, so there is no second copy in RAM, and pages that are not in use can be handed back
to the kernel with ``madvise`` while their data stays in the file.

Each tensor gets a slot that starts on a 64 KiB boundary, so that page-granular hints on one slot
never touch its neighbours (Android devices have 4 KiB or 16 KiB pages).
"""

from __future__ import annotations

import ctypes
import errno
import math
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

SLOT_ALIGNMENT_BYTES = 1 << 16
ELEMENT_BYTES = 4  # float32
COPY_CHUNK_BYTES = 16 << 20
MADV_WILLNEED = 3
MADV_DONTNEED = 4
MADV_REMOVE = 9
SYNC_FILE_RANGE_WRITE = 2

# The process's own symbols: glibc on Linux, bionic on Android.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    _sync_file_range.restype = ctypes.c_int


@dataclass(frozen=True)
class Slot:
    """Where one tensor lives in a shard file: element offset, element count and shape."""

    offset: int
    numel: int
    shape: tuple[int, ...]


def plan_slots(shapes: Sequence[Sequence[int]]) -> tuple[list[Slot], int]:
    """Aligned slots for tensors of ``shapes``, in order, and the file length in elements they need."""
    aligned_elements = SLOT_ALIGNMENT_BYTES // ELEMENT_BYTES
    slots, offset = [], 0
    for shape in shapes:
        numel = math.prod(shape)
        slots.append(Slot(offset, numel, tuple(shape)))
        offset += math.ceil(max(numel, 1) / aligned_elements) * aligned_elements
    return slots, offset


class MappedFile:
    """One float32 file mapped shared into memory, with views and kernel hints per slot."""

    def __init__(self, path: Path, num_elements: int, create: bool):
        """Map ``path``; ``create`` makes a new sparse (all-zero) file of ``num_elements`` floats first."""
        self.path = Path(path)
        if create:
            with self.path.open("wb") as file:
                file.truncate(num_elements * ELEMENT_BYTES)
        self.flat = torch.from_file(str(self.path), shared=True, size=num_elements, dtype=torch.float32)
        self._descriptor = os.open(self.path, os.O_RDWR)

    def view(self, slot: Slot) -> torch.Tensor:
        return self.flat[slot.offset : slot.offset + slot.numel].view(slot.shape)

    def will_need(self, slot: Slot) -> None:
        """Start reading the slot's pages in the background (asynchronous readahead)."""
        self._advise(slot, MADV_WILLNEED)

    def release(self, slot: Slot, rows: slice = slice(None)) -> None:
        """Start writing the dirty pages of the slot (or of these rows of it) back, and take them out of this process's memory.

        The data stays in the file (and in the page cache until the kernel needs the room): dropping a
        shared file mapping's pages keeps their contents.
        """
        offset, numel = _row_range(slot, rows)
        if _sync_file_range is not None:
            _sync_file_range(self._descriptor, offset * ELEMENT_BYTES, numel * ELEMENT_BYTES, SYNC_FILE_RANGE_WRITE)
        self._advise_range(offset, numel, MADV_DONTNEED)

    def drop(self, slot: Slot, rows: slice = slice(None)) -> None:
        """Take the pages of these rows out of this process's memory without starting to write them (they will be discarded)."""
        self._advise_range(*_row_range(slot, rows), MADV_DONTNEED)

    def discard(self, slot: Slot) -> None:
        """Throw the slot's contents away (it reads as zeros afterwards) without writing it to flash."""
        if not self._advise(slot, MADV_REMOVE, check=False):
            self._advise(slot, MADV_DONTNEED)

    def zero(self, slot: Slot) -> None:
        """Make the slot read as zeros: punch its pages out of the file, or write zeros where the file system cannot."""
        if self._advise(slot, MADV_REMOVE, check=False):
            return
        view = self.view(slot).view(-1)
        piece = COPY_CHUNK_BYTES // ELEMENT_BYTES
        for start in range(0, view.numel(), piece):
            view[start : start + piece].zero_()
            self.release(Slot(slot.offset + start, min(piece, slot.numel - start), (min(piece, slot.numel - start),)))

    def copy_from(self, source: Path) -> None:
        """Overwrite the whole file with ``source`` (same length) in place, so the mapping stays valid."""
        with Path(source).open("rb") as reader:
            position = 0
            while chunk := reader.read(COPY_CHUNK_BYTES):
                os.pwrite(self._descriptor, chunk, position)
                position += len(chunk)
        expected = self.flat.numel() * ELEMENT_BYTES
        if position != expected:
            raise ValueError(f"{source} holds {position} bytes, expected {expected} for {self.path.name}; the checkpoint does not fit this model")

    def close(self) -> None:
        os.close(self._descriptor)

    def _advise_range(self, offset: int, numel: int, advice: int) -> None:
        """``madvise`` over the pages that hold these elements, partial pages at the ends included (never for MADV_REMOVE)."""
        page = mmap.PAGESIZE
        first = self.flat.data_ptr() + offset * ELEMENT_BYTES
        start = first - first % page
        length = math.ceil((first + numel * ELEMENT_BYTES - start) / page) * page
        if numel and _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), advice) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"madvise({advice}) on {self.path.name} failed: {os.strerror(code)}")

    def _advise(self, slot: Slot, advice: int, check: bool = True) -> bool:
        start, length = self._page_range(slot)
        if length == 0:
            return True
        if _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), advice) == 0:
            return True
        code = ctypes.get_errno()
        if check:
            raise OSError(code, f"madvise({advice}) on {self.path.name} failed: {os.strerror(code)}")
        if code not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.EPERM):
            raise OSError(code, f"madvise({advice}) on {self.path.name} failed: {os.strerror(code)}")
        return False

    def _page_range(self, slot: Slot) -> tuple[int, int]:
        # Slots start on page boundaries; rounding the end up stays inside the slot's alignment padding.
        page = mmap.PAGESIZE
        start = self.flat.data_ptr() + slot.offset * ELEMENT_BYTES
        length = math.ceil(slot.numel * ELEMENT_BYTES / page) * page
        return start, length


def _row_range(slot: Slot, rows: slice) -> tuple[int, int]:
    """The element offset and count of ``rows`` (a step-1 slice of the first dimension) of the slot's tensor."""
    num_rows = slot.shape[0] if slot.shape else 1
    start, stop, _step = rows.indices(num_rows)
    row_elements = slot.numel // num_rows if num_rows else 0
    return slot.offset + start * row_elements, max(0, stop - start) * row_elements
