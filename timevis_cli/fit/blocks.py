"""A sequence of array blocks kept in memory up to a budget, then in a scratch file.

The refinement visits every epoch's edges and every sample's trajectory targets once per layout
epoch; held in memory they would grow with the number of epochs. :class:`BlockStore` keeps them
in memory while their total stays under a byte budget and past it writes every block to an
unlinked temporary file, reading one block back at a time (plain reads, not a memory map: the
pages stay in the operating system's cache, which it may drop, not in the process).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from timevis_cli.errors import InputError, TimeVisError

log = logging.getLogger(__name__)


class BlockStore:
    """Blocks of named arrays with fixed dtypes (``fields``: name -> dtype), appended in order
    and read back by index or in order, as many times as needed.

    Blocks stay in memory while the store's total is at most ``budget_bytes``; the append that
    would pass it moves every block to a scratch file in ``scratch_dir`` (the system's temporary
    folder when None), and later blocks go there too. The file is unlinked at creation, so it
    disappears when the store is closed or the process ends, however it ends.

    >>> store = BlockStore({"a": np.int32}, budget_bytes=8)
    >>> store.append(a=np.arange(2))
    >>> store.spilled
    False
    >>> store.append(a=np.arange(3))
    >>> store.spilled, store[1]["a"].tolist(), len(store)
    (True, [0, 1, 2], 2)
    >>> store.close()
    """

    def __init__(
        self,
        fields: Mapping[str, Any],
        budget_bytes: int,
        scratch_dir: Path | None = None,
        label: str = "blocks",
    ) -> None:
        if budget_bytes < 0:
            raise InputError(f"a block store's budget must be >= 0 bytes, got {budget_bytes}")
        self.fields = {name: np.dtype(dtype) for name, dtype in fields.items()}
        self.budget_bytes = int(budget_bytes)
        self.scratch_dir = scratch_dir
        self.label = label
        self.nbytes = 0
        self._memory: list[dict[str, np.ndarray]] = []
        # per block and field: (offset in the file, shape)
        self._index: list[dict[str, tuple[int, tuple[int, ...]]]] = []
        self._file: IO[bytes] | None = None
        self._end = 0

    @property
    def spilled(self) -> bool:
        """Whether the blocks live in the scratch file."""
        return self._file is not None

    @property
    def resident_bytes(self) -> int:
        """Bytes of blocks held in memory."""
        return 0 if self.spilled else self.nbytes

    def __len__(self) -> int:
        return len(self._index) if self.spilled else len(self._memory)

    def append(self, **arrays: np.ndarray) -> None:
        """Add one block; every field of ``fields`` must be given (converted to its dtype)."""
        if set(arrays) != set(self.fields):
            raise InputError(f"a block needs the fields {sorted(self.fields)}, got {sorted(arrays)}")
        block = {
            name: np.ascontiguousarray(arrays[name], dtype=dtype) for name, dtype in self.fields.items()
        }
        size = sum(a.nbytes for a in block.values())
        if not self.spilled and self.nbytes + size > self.budget_bytes:
            self._spill()
        self.nbytes += size
        if self.spilled:
            self._write(block)
        else:
            self._memory.append(block)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not self.spilled:
            return self._memory[i]
        assert self._file is not None
        block = {}
        for name, (offset, shape) in self._index[i].items():
            dtype = self.fields[name]
            out = np.empty(shape, dtype)
            self._file.seek(offset)
            view = memoryview(out.reshape(-1).view(np.uint8))
            try:
                read = self._file.readinto(view)
            except OSError as exc:
                raise TimeVisError(f"{self._where()}: cannot read back {self.label} ({exc})") from exc
            if read != out.nbytes:
                raise TimeVisError(
                    f"{self._where()}: the scratch file of {self.label} gave {read} of {out.nbytes} bytes"
                )
            block[name] = out
        return block

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        """Drop every block (and the scratch file)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._memory.clear()
        self._index.clear()
        self.nbytes = 0

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _where(self) -> Path:
        return self.scratch_dir or Path(tempfile.gettempdir())

    def _spill(self) -> None:
        where = self._where()
        try:
            self._file = tempfile.TemporaryFile(dir=where, prefix=".timevis-scratch-")
        except OSError as exc:
            raise InputError(
                f"cannot write the {self.label} scratch file in {where} ({exc.strerror}): make it "
                "writable or raise refine.memory_mb to keep the blocks in memory"
            ) from exc
        log.info(
            "%s pass %.0f MB: kept in a scratch file in %s and read back block by block",
            self.label, self.budget_bytes / 2**20, where,
        )  # fmt: skip
        held, self._memory = self._memory, []
        for block in held:
            self._write(block)

    def _write(self, block: dict[str, np.ndarray]) -> None:
        assert self._file is not None
        entry = {}
        try:
            self._file.seek(self._end)
            for name, array in block.items():
                entry[name] = (self._end, array.shape)
                self._file.write(memoryview(array.reshape(-1).view(np.uint8)))
                self._end += array.nbytes
            self._file.flush()  # a full disk shows here, not at a later read
        except OSError as exc:
            message = (
                f"cannot write {self.label} ({self.nbytes / 2**20:.0f} MB) to a scratch file in "
                f"{self._where()} ({exc.strerror or exc}): free disk space there, raise "
                "refine.memory_mb to keep them in memory, or lower refine.trajectory_lags"
            )
            self.close()
            raise InputError(message) from exc
        self._index.append(entry)
