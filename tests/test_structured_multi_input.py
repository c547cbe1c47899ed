"""Several example inputs: the analysis keeps only channels prunable on every input, the
slim model is validated on each, and input-dependent control flow is reported."""
import pytest
import torch
import torch.nn as nn

from prunekit.structured import Examples, channel_groups, check_exact, several, slim
from prunekit.structured.trace.examples import as_list


class Branchy(nn.Module):
    """Wide inputs go through ``wide``, narrow ones through ``narrow``; both read the trunk."""

    def __init__(self):
        super().__init__()
        self.wide = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 8, 1))
        self.narrow = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        if x.shape[-1] > 8:
            return self.wide(x)
        return self.narrow(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1))
        self.block = Branchy()
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.head(torch.relu(self.block(self.stem(x))))


def _inputs():
    torch.manual_seed(1)
    return torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8)


def test_one_input_breaks_on_the_other_branch():
    torch.manual_seed(0)
    model = Net().eval()
    a, b = _inputs()
    s = slim(model, a, 0.5)  # `narrow` never ran: its input columns were not cut
    with pytest.raises(RuntimeError):
        s(b)


def test_several_inputs_give_a_model_exact_on_every_input():
    torch.manual_seed(0)
    model = Net().eval()
    a, b = _inputs()
    with pytest.warns(UserWarning, match=r"control flow depends on the input.*module 'block'"):
        s = slim(model, Examples([a, b]), 0.5)
    for x in (a, b):
        assert check_exact(model, s, inputs=x) < 1e-5
    assert s.stem[2].out_channels < 8 and s.block.wide[0].out_channels < 12
    assert s.block.narrow.in_channels == s.stem[2].out_channels


def test_groups_of_several_inputs_are_the_union_of_couplings():
    torch.manual_seed(0)
    model = Net().eval()
    a, b = _inputs()
    with pytest.warns(UserWarning):
        gs = channel_groups(model, several(a, b))
    trunk = next(g for g in gs if any(n == "stem.2" for n, _ in g.out_layers))
    consumers = {n for n, _ in trunk.in_layers}
    assert consumers == {"block.wide.0", "block.narrow"}
    only_a = next(g for g in channel_groups(model, a) if any(n == "stem.2" for n, _ in g.out_layers))
    assert {n for n, _ in only_a.in_layers} == {"block.wide.0"}


def test_same_graph_no_warning_and_list_of_kwargs_dicts():
    class KW(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 10), nn.Linear(10, 3)

        def forward(self, x, scale=None):
            return self.b(torch.relu(self.a(x))) * (1 if scale is None else scale)

    torch.manual_seed(0)
    model = KW().eval()
    xs = [{"x": torch.randn(2, 6)}, {"x": torch.randn(4, 6)}]
    assert len(as_list(model, xs)) == 2
    assert len(as_list(model, [{"other": 1}])) == 1  # not forward parameters: positional meaning
    assert len(as_list(model, (torch.randn(2, 6),))) == 1  # a tuple stays positional args
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = slim(model, xs, 0.5)
    for x in xs:
        assert check_exact(model, s, inputs=x) < 1e-5
    assert s.a.out_features == 5
