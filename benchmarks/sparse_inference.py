"""Where does unstructured sparsity pay on CPU? torch.sparse CSR Linear vs dense, and file sizes.

    .venv/bin/python benchmarks/sparse_inference.py          # fast mode (~1-2 min, 1 thread)
    .venv/bin/python benchmarks/sparse_inference.py --full   # larger layers, longer timing

For each layer size, sparsity (90%, 99%) and batch size, the dense ``F.linear`` and the CSR
product (``torch.sparse.mm(W_csr, x^T)``) are timed alternately with
``torch.utils.benchmark`` (median of blocked runs, repeated ``--repeats`` times, median of
those); the speed-up is dense time / CSR time, measured side by side. It also times a
whole pruned LeNet-300-100 (``prunekit.sparse.export.to_sparse_linear``) and reports the
compact export's file size against the dense file. Writes benchmarks/results/sparse_inference.json.
"""
from __future__ import annotations

import argparse
import statistics
import warnings
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import benchmark

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prunekit import models  # noqa: E402
from prunekit.foundations.io import atomic_write_json, save_tensors  # noqa: E402
from prunekit.sparse import masks as M  # noqa: E402
from prunekit.sparse.export import save_sparse, to_sparse_linear  # noqa: E402


def sparse_weight(out_f, in_f, sparsity, gen):
    w = torch.randn(out_f, in_f, generator=gen)
    keep = torch.rand(out_f, in_f, generator=gen) >= sparsity  # unstructured, uniform
    return w * keep


def time_pair(fn_a, fn_b, min_run_time, repeats):
    """Median seconds of two callables, measured alternately so drift hits both alike."""
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((fn_a, ta), (fn_b, tb)):
            m = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=1).blocked_autorange(min_run_time=min_run_time)
            out.append(m.median)
    return statistics.median(ta), statistics.median(tb)


def layer_rows(sizes, sparsities, batches, min_run_time, repeats):
    gen = torch.Generator().manual_seed(0)
    rows = []
    for out_f, in_f in sizes:
        for s in sparsities:
            w = sparse_weight(out_f, in_f, s, gen)
            b = torch.randn(out_f, generator=gen)
            w_csr = w.to_sparse_csr()
            for n in batches:
                x = torch.randn(n, in_f, generator=gen)
                xt = x.t().contiguous()
                torch.testing.assert_close(torch.sparse.mm(w_csr, xt).t() + b, F.linear(x, w, b), rtol=1e-4, atol=1e-4)
                with torch.inference_mode():
                    td, ts = time_pair(lambda: F.linear(x, w, b), lambda: torch.sparse.mm(w_csr, xt).t() + b,
                                       min_run_time, repeats)
                rows.append({"layer": f"{in_f}->{out_f}", "sparsity": s, "batch": n, "dense_us": td * 1e6,
                             "csr_us": ts * 1e6, "speedup": td / ts})
                print(f"{in_f:>5}->{out_f:<5} sparsity {s:.2f} batch {n:>4}: dense {td * 1e6:9.1f} us  "
                      f"CSR {ts * 1e6:9.1f} us  speed-up x{td / ts:5.2f}", flush=True)
    return rows


def model_rows(sparsities, batches, min_run_time, repeats):
    rows = []
    for s in sparsities:
        torch.manual_seed(0)
        masked = models.build("lenet-300-100", 1, 28, 10).eval()
        M.apply_masks(masked, M.magnitude_masks(masked, s))
        fast = to_sparse_linear(masked).eval()
        # The fair dense baseline: plain Linear layers holding the zeros (no parametrization overhead).
        net = models.build("lenet-300-100", 1, 28, 10).eval()
        with torch.no_grad():
            for (n, m), src in zip(M.prunable_modules(net).items(), M.prunable_modules(masked).values()):
                m.weight.copy_(src.weight)
                m.bias.copy_(src.bias)
        for n in batches:
            x = torch.randn(n, 1, 28, 28)
            with torch.inference_mode():
                td, ts = time_pair(lambda: net(x), lambda: fast(x), min_run_time, repeats)
            rows.append({"model": "lenet-300-100", "sparsity": s, "batch": n, "dense_us": td * 1e6,
                         "csr_us": ts * 1e6, "speedup": td / ts})
            print(f"lenet-300-100 sparsity {s:.3f} batch {n:>4}: dense {td * 1e6:8.1f} us  CSR {ts * 1e6:8.1f} us"
                  f"  speed-up x{td / ts:5.2f}", flush=True)
    return rows


def size_rows(sparsities):
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in ("lenet-300-100", "lenet5-caffe"):
            for s in sparsities:
                torch.manual_seed(0)
                net = models.build(name, 1, 28, 10)
                M.apply_masks(net, M.magnitude_masks(net, s))
                info = save_sparse(Path(d) / "s.safetensors", net)
                plain = {k: v for k, v in net.state_dict().items() if ".parametrizations." not in k}
                plain |= {f"{n}.weight": m.weight.detach() for n, m in M.prunable_modules(net).items()}
                save_tensors(Path(d) / "d.safetensors", plain)
                dense = (Path(d) / "d.safetensors").stat().st_size
                rows.append({"model": name, "sparsity": s, "sparse_bytes": info["bytes"], "dense_bytes": dense,
                             "ratio": dense / info["bytes"]})
                print(f"{name:14s} sparsity {s:.3f}: compact {info['bytes']:>9,} B  dense {dense:>9,} B  "
                      f"x{dense / info['bytes']:.1f} smaller", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="larger layers and longer timing")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    if args.full:
        sizes, batches, mrt = [(300, 784), (1024, 1024), (4096, 4096)], [1, 8, 32, 128, 512], 0.5
    else:
        sizes, batches, mrt = [(300, 784), (1024, 1024), (2048, 2048)], [1, 16, 128], 0.1
    sparsities = [0.9, 0.99]
    out = {"threads": 1, "torch": torch.__version__, "mode": "full" if args.full else "fast",
           "method": "median of blocked_autorange medians, dense and CSR measured alternately",
           "layers": layer_rows(sizes, sparsities, batches, mrt, args.repeats),
           "model": model_rows([0.9, 0.99, 0.998], batches, mrt, args.repeats),
           "file_size": size_rows([0.9, 0.99, 0.998])}
    path = ROOT / "benchmarks" / "results" / "sparse_inference.json"
    atomic_write_json(path, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
