import pytest
import torch

from prunekit.foundations import io


def test_state_roundtrip_keeps_types_and_int_keys():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.randn(3))], lr=0.1, momentum=0.9)
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "t": (1, 2.5, "x", None)}
    skel, tensors = io.split_state(state)
    back = io.join_state(skel, tensors)
    assert list(back["optimizer"]["state"].keys()) == [0]
    assert torch.equal(back["optimizer"]["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"])
    assert torch.equal(back["rng"], state["rng"]) and back["t"] == (1, 2.5, "x", None)


def test_save_load_tensors_with_metadata(tmp_path):
    p = tmp_path / "a.safetensors"
    io.save_tensors(p, {"w": torch.arange(4.0)}, {"k": [1, 2]})
    t, meta = io.load_tensors(p)
    assert torch.equal(t["w"], torch.arange(4.0)) and meta == {"k": [1, 2]}
    with pytest.raises(io.CheckpointError, match="no such file"):
        io.load_tensors(tmp_path / "missing.safetensors")
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(io.CheckpointError, match="corrupted"):
        io.load_tensors(p)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    p = tmp_path / "r.json"
    io.atomic_write_json(p, {"a": 1})
    with pytest.raises(TypeError):
        io.atomic_write_json(p, {"a": object()})
    assert p.read_text().strip().startswith("{") and '"a": 1' in p.read_text()
    assert [f.name for f in tmp_path.iterdir()] == ["r.json"]  # no temp files left
