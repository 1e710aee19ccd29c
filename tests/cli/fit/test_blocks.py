"""BlockStore: blocks of arrays in memory up to a budget, then in a scratch file."""

from __future__ import annotations

import os

import numpy as np
import pytest

from timevis_cli.errors import InputError
from timevis_cli.fit.blocks import BlockStore

FIELDS = {"rows": np.int32, "values": np.float32}


def _blocks(rng):
    return [
        {"rows": rng.integers(0, 100, size=size), "values": rng.normal(size=(size, 3))}
        for size in (5, 0, 17, 2)
    ]


@pytest.mark.parametrize("budget", [0, 150, 1 << 20])
def test_blocks_read_back_as_written_in_memory_or_from_the_scratch_file(tmp_path, budget):
    blocks = _blocks(np.random.default_rng(0))
    with BlockStore(FIELDS, budget, scratch_dir=tmp_path) as store:
        for block in blocks:
            store.append(**block)
        # 5 + 17 + 2 rows of 4 + 12 bytes: 384 bytes in all, over the budget of 150 after the third
        assert store.spilled == (budget < 384) and store.nbytes == 384
        assert store.resident_bytes == (0 if store.spilled else 384)
        assert len(store) == 4
        for _ in range(2):  # read back as often as needed, by index or in order
            for got, block in zip(store, blocks, strict=True):
                assert got["rows"].dtype == np.int32 and got["values"].dtype == np.float32
                np.testing.assert_array_equal(got["rows"], block["rows"].astype(np.int32))
                np.testing.assert_array_equal(got["values"], block["values"].astype(np.float32))
        np.testing.assert_array_equal(store[2]["values"], blocks[2]["values"].astype(np.float32))
        assert store[2]["values"].flags.writeable
    assert len(store) == 0 and not store.spilled
    assert os.listdir(tmp_path) == []  # the scratch file is unlinked: nothing is left behind


def test_a_block_needs_every_field_and_a_budget_is_not_negative(tmp_path):
    store = BlockStore(FIELDS, 10, scratch_dir=tmp_path)
    with pytest.raises(InputError, match=r"fields \['rows', 'values'\]"):
        store.append(rows=np.arange(3))
    with pytest.raises(InputError, match=">= 0 bytes"):
        BlockStore(FIELDS, -1)


def test_an_unwritable_scratch_folder_is_a_one_line_error_naming_the_fix(tmp_path):
    store = BlockStore(FIELDS, 0, scratch_dir=tmp_path / "absent", label="the test's edges")
    with pytest.raises(InputError, match="refine.memory_mb") as error:
        store.append(rows=np.arange(3), values=np.zeros((3, 3)))
    assert "the test's edges" in str(error.value) and "\n" not in str(error.value)


class _FullDisk:
    """A scratch file on a full disk: every write fails as the OS reports it."""

    def __init__(self, *args, **kwargs):
        self.closed = False

    def seek(self, offset):
        return offset

    def write(self, data):
        raise OSError(28, "No space left on device")

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_a_full_disk_is_a_one_line_error_and_leaves_the_store_closed(tmp_path, monkeypatch):
    monkeypatch.setattr("timevis_cli.fit.blocks.tempfile.TemporaryFile", _FullDisk)
    store = BlockStore(FIELDS, 50, scratch_dir=tmp_path, label="the test's edges")
    store.append(rows=np.arange(2), values=np.zeros((2, 3)))
    with pytest.raises(InputError, match="No space left on device") as error:
        store.append(rows=np.arange(4), values=np.zeros((4, 3)))
    message = str(error.value)
    assert "\n" not in message and str(tmp_path) in message and "refine.memory_mb" in message
    assert "the test's edges (0 MB)" in message
    assert len(store) == 0 and store.nbytes == 0 and not store.spilled
