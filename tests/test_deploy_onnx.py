"""ONNX export checked in ONNX Runtime, and torch.export, across the zoo and HF models."""
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import prunekit  # noqa: E402
from prunekit import models  # noqa: E402
from prunekit.deploy import ExportMismatchError, to_onnx  # noqa: E402
from prunekit.deploy.onnx import onnx_feed, onnx_session  # noqa: E402
from prunekit.metrics.latency import compare_latency  # noqa: E402
from prunekit.sparse import apply_masks, load_into, magnitude_masks, save_sparse  # noqa: E402
from test_models import _shape  # noqa: E402

logging.getLogger("torch.onnx").setLevel(logging.ERROR)


def _run_ort(path, inputs):
    sess = onnx_session(path)
    return [torch.as_tensor(o) for o in sess.run(None, onnx_feed(sess, inputs))]


@pytest.mark.parametrize("name", models.names())
def test_slim_zoo_models_export_to_onnx_and_torch_export(tmp_path, name):
    c, s = _shape(name)
    torch.manual_seed(0)
    net = models.build(name, c, s, 7).eval()
    x = torch.randn(2, c, s, s)
    slim = prunekit.slim(net, x, ratio=0.5).eval()
    info = to_onnx(slim, x, tmp_path / "m.onnx")
    assert info["max_rel_error"] <= 1e-4
    # the file was verified on batch 2; it also runs at another batch size (dynamic batch)
    x5 = torch.randn(5, c, s, s)
    (out,) = _run_ort(tmp_path / "m.onnx", x5)
    with torch.no_grad():
        ref = slim(x5)
    assert torch.allclose(out, ref, atol=1e-4 * max(1.0, ref.abs().max().item()))
    exported = torch.export.export(slim, (x,))
    with torch.no_grad():
        assert torch.allclose(exported.module()(x), slim(x), atol=1e-6)


def test_masked_model_and_its_compact_export_go_to_onnx(tmp_path):
    torch.manual_seed(0)
    net = models.build("lenet-300-100", 1, 28, 10).eval()
    apply_masks(net, magnitude_masks(net, 0.95))
    x = torch.randn(3, 1, 28, 28)
    info = to_onnx(net, x, tmp_path / "masked.onnx")
    assert info["max_rel_error"] <= 1e-4
    save_sparse(tmp_path / "s.safetensors", net)
    again = load_into(models.build("lenet-300-100", 1, 28, 10), tmp_path / "s.safetensors").eval()
    to_onnx(again, x, tmp_path / "from_sparse.onnx")
    (a,), (b,) = _run_ort(tmp_path / "masked.onnx", x), _run_ort(tmp_path / "from_sparse.onnx", x)
    assert torch.allclose(a, b, atol=1e-6)
    # the zeros survive into the ONNX initializers
    import onnx

    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(tmp_path / "masked.onnx").graph.initializer}
    big = max(inits.values(), key=lambda a: a.size)
    assert (big == 0).mean() > 0.9
    # the user's model keeps its masks (export works on a copy)
    from prunekit.sparse.masks import get_masks

    assert get_masks(net)


def test_bn_is_folded_before_export(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    slim = prunekit.slim(models.build("resnet20").eval(), x, ratio=0.5).eval()
    info = to_onnx(slim, x, tmp_path / "r.onnx")
    import onnx

    ops = {n.op_type for n in onnx.load(tmp_path / "r.onnx").graph.node}
    assert info["folded_bn"] == 19 and "BatchNormalization" not in ops


def test_a_mismatch_raises_and_leaves_no_file(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    slim = prunekit.slim(models.build("resnet20").eval(), x, ratio=0.5).eval()
    with pytest.raises(ExportMismatchError, match="differ from PyTorch's"):
        to_onnx(slim, x, tmp_path / "r.onnx", rtol=1e-15)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["bert", "distilbert", "vit", "convnext", "wav2vec2", "clip-vision"])
def test_slim_hf_models_export_to_onnx(tmp_path, name):
    from test_hf_models import CASES

    build, inputs = CASES[name]
    torch.manual_seed(0)
    net, x = build().eval(), inputs()
    slim = prunekit.slim(net, x, ratio=0.5).eval()
    assert to_onnx(slim, x, tmp_path / "m.onnx")["max_rel_error"] <= 1e-4


def test_onnxruntime_latency_backend_times_the_same_models():
    x = torch.randn(1, 3, 32, 32)
    net = models.build("resnet20").eval()
    slim = prunekit.slim(net, x, ratio=0.5).eval()
    t = compare_latency({"dense": net, "slim": slim}, x, rounds=2, min_run_time=0.01, backend="onnxruntime")
    assert set(t) == {"dense", "slim"} and all(v > 0 for v in t.values())
    with pytest.raises(ValueError, match="unknown latency backend 'tvm'"):
        compare_latency({"dense": net}, x, backend="tvm")


def test_fastest_deployable_removes_masks_and_keeps_outputs():
    from prunekit.deploy.sparse import fastest_deployable
    from prunekit.sparse.masks import get_masks

    torch.manual_seed(0)
    net = models.build("lenet-300-100", 1, 28, 10).eval()
    apply_masks(net, magnitude_masks(net, 0.99))
    x = torch.randn(16, 1, 28, 28)
    shipped, how = fastest_deployable(net, x)
    assert how in ("dense kernels", "CSR Linear")
    assert not get_masks(shipped) and get_masks(net)  # the user's model keeps its masks
    with torch.no_grad():
        assert torch.allclose(shipped(x), net(x), atol=1e-5)
