"""HuggingFace round trips: a slim model saved by save_pruned reloads without user code.

- Every covered architecture: ``prunekit.load_pruned(dir)`` with no model object rebuilds
  it (base config from the plan), with identical outputs, for uniform and global plans.
- With ``uniform_layers=True``: a standard ``config.json`` that plain
  ``from_pretrained(dir)`` rebuilds, identical outputs (encoders, decoders with GQA,
  vision models). The list is strict: an architecture that stops getting a standard
  config fails here.
"""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")

import prunekit  # noqa: E402
from prunekit.deploy.onnx import flat_outputs  # noqa: E402
from test_hf_models import CASES  # noqa: E402

STANDARD = ["bert", "distilbert", "roberta", "gpt2", "llama", "qwen2", "vit", "convnext", "t5-encoder", "swin",
            "opt", "phi", "resnet", "gpt-neox"]
ROUND_TRIP = STANDARD + ["wav2vec2", "clip-vision", "mobilenetv2", "dinov2", "bart", "falcon"]


def _same(a, b):
    fa, fb = flat_outputs(a), flat_outputs(b)
    return len(fa) == len(fb) > 0 and all(x.shape == y.shape and torch.allclose(x, y, atol=1e-5)
                                          for x, y in zip(fa, fb))


def _slim(name, uniform):
    build, inputs = CASES[name]
    torch.manual_seed(0)
    net, x = build().eval(), inputs()
    s = prunekit.slim(net, x, ratio=0.5, uniform_layers=uniform, mode="uniform" if uniform else "global")
    return net, s.eval(), x


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_load_pruned_rebuilds_hf_models_from_the_directory_alone(tmp_path, name):
    for uniform in (True, False):
        net, s, x = _slim(name, uniform)
        d = prunekit.save_pruned(s, tmp_path / f"u{uniform}")
        again = prunekit.load_pruned(d)
        assert type(again) is type(net)
        with torch.no_grad():
            assert _same(s(**x), again.eval()(**x))
        assert sum(p.numel() for p in again.parameters()) < sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", STANDARD)
def test_uniform_widths_write_a_standard_config_from_pretrained_rebuilds(tmp_path, name):
    net, s, x = _slim(name, True)
    d = prunekit.save_pruned(s, tmp_path / "slim")
    assert (d / "config.json").exists()
    assert json.loads((d / "plan.json").read_text())["hf"]["standard_config"] is True
    auto = getattr(transformers, type(net).__name__).from_pretrained(str(d)).eval()
    with torch.no_grad():
        assert _same(s(**x), auto(**x))
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(auto) == shapes(s)


def test_uniform_layers_gives_every_block_the_same_widths():
    net, s, x = _slim("llama", False)
    _, u, _ = _slim("llama", True)
    widths = lambda m: {tuple(layer.mlp.up_proj.weight.shape) for layer in m.model.layers}  # noqa: E731
    assert len(widths(u)) == 1
    # GQA stays valid: query heads a multiple of KV heads in every layer
    for layer in u.model.layers:
        q, k = layer.self_attn.q_proj.out_features, layer.self_attn.k_proj.out_features
        assert q % k == 0


def test_non_uniform_model_gets_no_config_json_and_load_pruned_needs_no_model(tmp_path):
    build, inputs = CASES["bert"]
    torch.manual_seed(0)
    net, x = build().eval(), inputs()
    # different ratios per layer: no single config describes it
    s = prunekit.slim(net, x, ratio=0.3, overrides={"*layer.0.*": 0.6}).eval()
    d = prunekit.save_pruned(s, tmp_path / "slim")
    assert not (d / "config.json").exists()
    with torch.no_grad():
        assert _same(s(**x), prunekit.load_pruned(d).eval()(**x))


def test_load_pruned_without_a_model_for_a_non_hf_model_says_what_to_pass(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    d = prunekit.save_pruned(prunekit.slim(prunekit.models.build("resnet20"), x, ratio=0.5), tmp_path / "r")
    with pytest.raises(ValueError, match="pass a freshly built base_model"):
        prunekit.load_pruned(d)
