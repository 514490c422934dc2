"""The torch zip writer: what torch.save writes, with unchanged input records copied, not rewritten."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt_path._ranges import InputRecords
from ckpt_path._zipwriter import save_torch_zip

DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.complex64,
    torch.float8_e4m3fn,
]


def _tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 100, shape, generator=generator).to(torch.float32).to(dtype)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return bool(torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)))


def _write(obj: object, path: Path, **options: object) -> object:
    with path.open("wb") as handle:
        return save_torch_zip(obj, handle, **options)  # type: ignore[arg-type]


def _assert_loads_as(path: Path, expected: dict[str, torch.Tensor]) -> None:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
    for mmap in (False, True):
        got = torch.load(path, weights_only=True, mmap=mmap)
        assert sorted(got) == sorted(expected)
        for key, tensor in expected.items():
            assert _same(got[key], tensor), (key, mmap)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_loads_bitwise_as_torch_save_would(tmp_path, dtype):
    """Each dtype, including zero-size, 0-d and non-contiguous tensors, loads back bitwise, mmap or not."""
    base = _tensor(dtype, (4, 6), 1)
    obj = {"t": base, "empty": _tensor(dtype, (0, 3), 2), "scalar": _tensor(dtype, (), 3), "view": base[:, 1:4]}
    _write(obj, tmp_path / "out.ckpt")
    _assert_loads_as(tmp_path / "out.ckpt", obj)
    torch.save(obj, tmp_path / "reference.ckpt")
    _assert_loads_as(tmp_path / "reference.ckpt", obj)


def test_views_of_one_storage_still_share_it(tmp_path):
    """Two tensors viewing one storage come back sharing one storage, as with torch.save."""
    base = torch.arange(20.0)
    obj = {"a": base, "b": base[5:10], "c": base.view(4, 5)}
    _write(obj, tmp_path / "out.ckpt")
    for mmap in (False, True):
        got = torch.load(tmp_path / "out.ckpt", weights_only=True, mmap=mmap)
        pointers = {got[k].untyped_storage().data_ptr() for k in obj}
        assert len(pointers) == 1
        got["a"][6] = -1.0
        assert got["b"][1] == -1.0


def _source(tmp_path: Path, count: int = 4) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors = {f"w{i}": _tensor(torch.float32, (64, 33), i) for i in range(count)}
    path = tmp_path / "in.ckpt"
    torch.save({"state_dict": tensors, "epoch": 3}, path)
    return path, tensors


def test_unchanged_records_are_copied_and_keep_their_crc(tmp_path):
    """A rename-only save copies every tensor record of the input, CRCs taken as they were."""
    path, tensors = _source(tmp_path)
    loaded = torch.load(path, weights_only=True, mmap=True)
    loaded["state_dict"] = {f"new.{k}": v for k, v in loaded["state_dict"].items()}
    report = _write(loaded, tmp_path / "out.ckpt", inputs=[InputRecords.torch_zip(path)])
    assert len(report.copied) == 4  # type: ignore[attr-defined]
    assert report.copied_bytes == sum(t.nbytes for t in tensors.values())  # type: ignore[attr-defined]
    with zipfile.ZipFile(path) as old, zipfile.ZipFile(tmp_path / "out.ckpt") as new:
        old_crcs = {i.CRC for i in old.infolist() if "/data/" in i.filename}
        new_crcs = {i.CRC for i in new.infolist() if "/data/" in i.filename}
        assert old_crcs == new_crcs
    got = torch.load(tmp_path / "out.ckpt", weights_only=True, mmap=True)
    assert all(_same(got["state_dict"][f"new.{k}"], v) for k, v in tensors.items())
    assert got["epoch"] == 3


def test_a_computed_tensor_is_written_and_the_rest_copied(tmp_path):
    """A step that replaced one tensor makes that one record written from memory; the others are copied."""
    path, tensors = _source(tmp_path)
    loaded = torch.load(path, weights_only=True, mmap=True)
    loaded["state_dict"]["w0"] = loaded["state_dict"]["w0"].flip(0)
    report = _write(loaded, tmp_path / "out.ckpt", inputs=[InputRecords.torch_zip(path)])
    assert len(report.copied) == 3  # type: ignore[attr-defined]
    expected = {**tensors, "w0": tensors["w0"].flip(0)}
    got = torch.load(tmp_path / "out.ckpt", weights_only=True)
    assert all(_same(got["state_dict"][k], v) for k, v in expected.items())


def test_memory_changed_in_place_is_written_not_copied_unless_trusted(tmp_path):
    """A storage changed in place (part of it) is written from memory when memory is not trusted."""
    path, tensors = _source(tmp_path)
    loaded = torch.load(path, weights_only=True, mmap=True)
    loaded["state_dict"]["w1"][3:5].mul_(2)
    report = _write(loaded, tmp_path / "out.ckpt", inputs=[InputRecords.torch_zip(path)], trust_memory=False)
    assert len(report.copied) == 3  # type: ignore[attr-defined]
    expected = dict(tensors)
    expected["w1"] = tensors["w1"].clone()
    expected["w1"][3:5] *= 2
    got = torch.load(tmp_path / "out.ckpt", weights_only=True)
    assert all(_same(got["state_dict"][k], v) for k, v in expected.items())


def test_a_compressed_input_record_is_written_not_copied(tmp_path):
    """Records that are not stored as they are in the input (compressed) are never copied as ranges."""
    path, tensors = _source(tmp_path, count=2)
    packed = tmp_path / "packed.ckpt"
    with zipfile.ZipFile(path) as old, zipfile.ZipFile(packed, "w") as new:
        for info in old.infolist():
            kind = zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED
            new.writestr(info.filename, old.read(info), compress_type=kind)
    assert InputRecords.torch_zip(packed).by_offset == {
        k: v for k, v in InputRecords.torch_zip(packed).by_offset.items() if "/data/" not in v.name
    }
    loaded = torch.load(path, weights_only=True, mmap=True)
    report = _write(loaded, tmp_path / "out.ckpt", inputs=[InputRecords.torch_zip(packed)])
    assert report.copied == ()  # type: ignore[attr-defined]
    got = torch.load(tmp_path / "out.ckpt", weights_only=True)
    assert all(_same(got["state_dict"][k], v) for k, v in tensors.items())


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=3), min_size=1, max_size=5),
    dtype=st.sampled_from(DTYPES),
    data=st.data(),
)
def test_any_state_dict_round_trips_bitwise(tmp_path_factory, shapes, dtype, data):
    """Random shapes, dtypes and slices load back bitwise equal to the object saved."""
    directory = tmp_path_factory.mktemp("zip")
    obj: dict[str, torch.Tensor] = {}
    for index, shape in enumerate(shapes):
        tensor = _tensor(dtype, tuple(shape), index)
        if tensor.dim() and tensor.shape[0] > 1 and data.draw(st.booleans()):
            tensor = tensor[1:]
        obj[f"k{index}"] = tensor
    _write(obj, directory / "out.ckpt")
    _assert_loads_as(directory / "out.ckpt", obj)
