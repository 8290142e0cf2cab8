"""The torch-free checkpoint reader: real CAM++ weights, and refusal of anything off its allow-list."""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from diarflow.provisioning import ModelPaths
from diarflow.provisioning.torch_zip import UnsafeCheckpointError, load_state_dict


def _write_checkpoint(path: Path, payload: bytes, storages: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        for key, raw in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", raw)
    return path


def _text(value: str) -> bytes:
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int_tuple(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"


def _tensor_pickle(name: str, key: str, numel: int, size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    """Protocol-2 pickle of ``{name: tensor}`` with the opcodes ``torch.save`` writes."""
    storage = b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text(key) + _text("cpu") + \
        b"J" + struct.pack("<i", numel) + b"tQ"
    tensor = (b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"J\x00\x00\x00\x00" + _int_tuple(size)
              + _int_tuple(stride) + b"\x89}tR")
    return b"\x80\x02}(" + _text(name) + tensor + b"u."


def test_real_campplus_checkpoint_loads(model_paths: ModelPaths) -> None:
    weights = load_state_dict(model_paths.silero_vad.parent / "campplus_cn_en_common.pt")
    assert len(weights) == 937
    assert weights["head.conv1.weight"].shape == (32, 1, 3, 3)
    assert weights["xvector.dense.linear.weight"].shape == (192, 1024, 1)
    assert weights["head.bn1.num_batches_tracked"].dtype == np.int64
    assert sum(w.size for w in weights.values() if w.dtype == np.float32) > 6_900_000


def test_strided_tensor_is_rebuilt_with_offset_and_strides(tmp_path: Path) -> None:
    values = np.arange(12, dtype="<f4")
    payload = _tensor_pickle("w", "0", 12, (3, 2), (1, 3))  # a strided view
    path = _write_checkpoint(tmp_path / "t.pt", payload, {"0": values.tobytes()})
    loaded = load_state_dict(path)["w"]
    expected = np.array([[values[i + 3 * j] for j in range(2)] for i in range(3)])
    np.testing.assert_array_equal(loaded, expected)
    assert loaded.flags.c_contiguous


@pytest.mark.parametrize(
    "payload",
    [
        b"cos\nsystem\n(S'echo pwned'\ntR.",  # GLOBAL os.system, the classic
        b"cbuiltins\neval\n(S'1+1'\ntR.",
        b"cnumpy\nload\n(S'x'\ntR.",  # even harmless-looking modules are off the list
    ],
)
def test_globals_outside_allow_list_are_refused(tmp_path: Path, payload: bytes) -> None:
    path = _write_checkpoint(tmp_path / "evil.pt", payload)
    with pytest.raises(UnsafeCheckpointError, match="not on the allow-list"):
        load_state_dict(path)


def test_truncated_storage_is_refused(tmp_path: Path) -> None:
    payload = _tensor_pickle("w", "0", 12, (12,), (1,))
    path = _write_checkpoint(tmp_path / "short.pt", payload, {"0": np.zeros(5, "<f4").tobytes()})
    with pytest.raises(UnsafeCheckpointError, match="truncated"):
        load_state_dict(path)


def test_non_dict_top_level_is_refused(tmp_path: Path) -> None:
    path = _write_checkpoint(tmp_path / "list.pt", pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="not a dict of tensors"):
        load_state_dict(path)


def test_training_checkpoint_metadata_loads_inert_and_only_when_named(tmp_path: Path) -> None:
    """A Lightning-style checkpoint: ``{"version": pkg.Version("1.0"), "state_dict": {...}}``. The named
    metadata class becomes an inert record (its module, which does not exist here, is never imported);
    unnamed, it is refused like any other global."""
    tensors = _tensor_pickle("w", "0", 2, (2,), (1,))[4:-2]  # the dict's items, without "}(" and "u."
    version = b"cpkg.meta\nVersion\n" + _text("1.0") + b"\x85\x81"  # GLOBAL, TUPLE1, NEWOBJ
    payload = (b"\x80\x02}(" + _text("version") + version + _text("state_dict") + b"}(" + tensors
               + b"uu.")
    path = _write_checkpoint(tmp_path / "lightning.ckpt", payload, {"0": np.ones(2, "<f4").tobytes()})
    weights = load_state_dict(path, entry="state_dict", opaque_globals=["pkg.meta.Version"])
    np.testing.assert_array_equal(weights["w"], np.ones(2, np.float32))
    with pytest.raises(UnsafeCheckpointError, match="pkg.meta.Version, which is not on the allow-list"):
        load_state_dict(path, entry="state_dict")
    with pytest.raises(UnsafeCheckpointError, match="not a dict of tensors"):
        load_state_dict(path, opaque_globals=["pkg.meta.Version"])  # the top level is not the weights
