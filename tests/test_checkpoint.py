import pytest
import torch

from fusion_core.engine.checkpoint import (CheckpointError, atomic_write_text, find_resumable, list_checkpoints,
                                    load_state, load_weights, save_checkpoint, state_dict_for_safetensors,
                                    verify_checkpoint)
from fusion_core.modalities.text import TextAdapter


def _save(root, step, value=1.0, keep=3):
    w = {"model": {"w": torch.full((3,), value)}}
    return save_checkpoint(root, step, w, {"step": step, "x": torch.tensor([step])}, "a: 1\n", keep)


def test_save_verify_and_keep_last(tmp_path):
    for s in (1, 2, 3, 4):
        _save(tmp_path, s, keep=2)
    cks = list_checkpoints(tmp_path)
    assert [c.name for c in cks] == ["step_00000003", "step_00000004"]
    assert (tmp_path / "latest").read_text().strip() == "step_00000004"
    assert verify_checkpoint(cks[-1])["step"] == 4
    assert load_state(cks[-1])["step"] == 4
    assert not list(tmp_path.glob(".fusion-tmp-*"))


def test_truncated_or_corrupt_checkpoint_falls_back(tmp_path, caplog):
    _save(tmp_path, 1)
    good = _save(tmp_path, 2)
    bad = _save(tmp_path, 3)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="truncated"):
        verify_checkpoint(bad)
    assert find_resumable(tmp_path) == good
    assert "falling back" in caplog.text
    flipped = bytearray((good / "state.pt").read_bytes())
    flipped[-10] ^= 0xFF
    (good / "state.pt").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="checksum"):
        verify_checkpoint(good)
    assert find_resumable(tmp_path).name == "step_00000001"


def test_incomplete_temp_folder_is_never_resumed(tmp_path):
    _save(tmp_path, 1)
    (tmp_path / ".fusion-tmp-step_00000002-abc").mkdir()  # a crash mid-write leaves only this
    assert find_resumable(tmp_path).name == "step_00000001"
    assert find_resumable(tmp_path / "nothing") is None


def test_tied_weights_round_trip(tmp_path):
    a = TextAdapter(8, tie_weights=True)
    sd = state_dict_for_safetensors(a)
    assert len(sd) == 1  # the tied matrix is stored once
    save_checkpoint(tmp_path, 1, {"model": sd}, {}, "")
    b = TextAdapter(8, tie_weights=True)
    load_weights(b, tmp_path / "step_00000001" / "model.safetensors")
    assert torch.equal(b.lm_head.weight, a.lm_head.weight) and b.lm_head.weight is b.embedding.weight


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two" and len(list(tmp_path.iterdir())) == 1
