"""Compact sparse export: exact round trip, compressed indices, smaller than dense, clear errors; CSR inference."""
import pytest
import torch
import torch.nn as nn

from prunekit.foundations.io import CheckpointError, save_tensors
from prunekit.models.mlp import MLP
from prunekit.sparse import masks as M
from prunekit.sparse.export import load_into, load_sparse, save_sparse, to_sparse_linear
from safetensors.torch import load_file


def pruned_mlp(sparsity=0.99, seed=0):
    torch.manual_seed(seed)
    net = MLP(784, [300, 100], 10)
    M.apply_masks(net, M.magnitude_masks(net, sparsity))
    return net


def test_round_trip_is_exact_and_small(tmp_path):
    net = pruned_mlp(0.99)
    info = save_sparse(tmp_path / "m.safetensors", net)
    dense_file = tmp_path / "dense.safetensors"
    save_tensors(dense_file, {k: v for k, v in net.state_dict().items() if ".parametrizations." not in k}
                 | {f"{n}.weight": m.weight.detach() for n, m in M.prunable_modules(net).items()})
    assert info["bytes"] < 0.05 * dense_file.stat().st_size
    assert info["ratio"] > 20 and info["sparse_tensors"] == 3
    sd = load_sparse(tmp_path / "m.safetensors")
    for n, m in M.prunable_modules(net).items():
        w = m.weight.detach() + 0.0  # canonical +0.0 for pruned entries
        assert torch.equal(sd[f"{n}.weight"].view(torch.int32), w.view(torch.int32)), n
        assert torch.equal(sd[f"{n}.bias"], m.bias.detach())
    fresh = MLP(784, [300, 100], 10)
    load_into(fresh, tmp_path / "m.safetensors")
    for n, mask in M.get_masks(net).items():
        assert torch.equal(M.get_masks(fresh)[n], mask)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(fresh(x), net(x))


def test_index_dtypes_follow_the_sizes(tmp_path):
    net = pruned_mlp(0.99)
    save_sparse(tmp_path / "m.safetensors", net)
    raw = load_file(tmp_path / "m.safetensors")
    assert raw["features.1.weight::col"].dtype == torch.int16  # 784 columns
    assert raw["features.1.weight::values"].dtype == torch.float32
    wide = nn.Sequential(nn.Linear(40000, 2))
    M.apply_masks(wide, M.magnitude_masks(wide, 0.99))
    save_sparse(tmp_path / "w.safetensors", wide)
    raw = load_file(tmp_path / "w.safetensors")
    assert raw["0.weight::col"].dtype == torch.int32  # 40000 columns do not fit int16
    assert raw["0.weight::crow"].dtype == torch.int16  # 800 kept entries do
    assert torch.equal(load_sparse(tmp_path / "w.safetensors")["0.weight"], wide[0].weight.detach() + 0.0)


def test_kept_zero_weights_keep_their_mask(tmp_path):
    net = pruned_mlp(0.9)
    with torch.no_grad():
        mask = M.current_mask(net.classifier)
        idx = mask.flatten().nonzero()[0]
        M.raw_weight(net.classifier).view(-1)[idx] = 0.0  # kept, but exactly zero
    save_sparse(tmp_path / "m.safetensors", net)
    fresh = load_into(MLP(784, [300, 100], 10), tmp_path / "m.safetensors")
    assert torch.equal(M.current_mask(fresh.classifier), mask)


def test_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_sparse(bad)
    other = tmp_path / "other.safetensors"
    save_tensors(other, {"a": torch.zeros(2)}, {"kind": "masks"})
    with pytest.raises(CheckpointError, match="not a prunekit sparse export"):
        load_sparse(other)
    save_sparse(tmp_path / "m.safetensors", pruned_mlp())
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_into(MLP(784, [300], 10), tmp_path / "m.safetensors")


def test_sparse_linear_matches_dense():
    net = pruned_mlp(0.9)
    fast = to_sparse_linear(net)
    assert sum(type(m).__name__ == "SparseLinear" for m in fast.modules()) == 3
    x = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(fast(x), net(x), rtol=1e-5, atol=1e-5)
    assert M.current_mask(net.classifier) is not None  # the original keeps its masks
