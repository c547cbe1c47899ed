"""Every benchmark mode of issue 13 (fast and --full) runs end to end on a tiny slice, so the
scripts cannot rot. The --full modes need CIFAR-10 / MNIST files, which are replaced here
by the offline ``synthetic`` dataset of the same shape."""
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import espn_resnet  # noqa: E402
import tpp_controls  # noqa: E402
from prunekit import data as datasets  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def synthetic(shape, val_fraction=0.1, seed=0):
    return datasets.load("synthetic", shape=shape, n_train=256, n_test=64, val_fraction=val_fraction, seed=seed)


def rows_of(folder):
    out = []
    for p in Path(folder).glob("*.json"):
        out += json.loads(p.read_text()).get("rows", [])
    return out


def test_espn_resnet_fast_tiny_all_methods(tmp_path):
    espn_resnet.main(["--tiny", "--seeds", "0", "--sparsities", "0.995", "--out", str(tmp_path),
                      "--methods", *espn_resnet.ALL_METHODS])
    rows = rows_of(tmp_path / "espn_resnet")
    methods = {r["method"] for r in rows}
    assert methods == {"dense", *espn_resnet.ALL_METHODS, *espn_resnet.CONTROLS}
    for r in rows:
        assert r["budget_steps"] > 0 and "final_acc" in r and "val_selected_acc" in r and "best_acc" in r
        if r["method"] != "dense":
            assert abs(r["sparsity_measured"] - 0.995) < 2e-3
            assert "layer_kept" in r and "empty_layers" in r
    # budget-matched: every main method within 5% of ESPN-Finetune's total (tiny IMP rounds up to 1 step/level)
    ref = next(r for r in rows if r["method"] == "espn-finetune")["budget_steps"]
    for r in rows:
        if r["method"] in ("snip", "grasp", "synflow", "magnitude", "random", "gmp", "espn-finetune-rule",
                           "espn-rewind"):
            assert abs(r["budget_steps"] - ref) <= 0.05 * ref, r["method"]
    merged = json.loads((tmp_path / "espn_resnet_tiny.json").read_text())
    assert merged["tables"]["espn-finetune"]["0.995"]["n"] == 1
    # GMP: accuracy is selected only among epochs at the final sparsity
    gmp = next(r for r in rows if r["method"] == "gmp")
    assert gmp["selected_from_step"] > 0


def test_espn_resnet_paper_recipe_tiny_scales_every_phase_alike(tmp_path):
    espn_resnet.main(["--paper-recipe", "--tiny", "--seeds", "0", "--out", str(tmp_path)])
    rows = {r["method"]: r for r in rows_of(tmp_path / "espn_resnet")}
    assert set(rows) == {"dense", "espn-finetune", "imp", "snip"}
    spe = rows["dense"]["budget_steps"]  # tiny: one dense epoch
    cfg = {"paper_scale": espn_resnet.PAPER["paper_scale"]}
    step = lambda phase: espn_resnet.paper_steps(cfg, phase, spe)  # noqa: E731
    # the authors' epochs x 1/40 each: IMP 24 levels of 160, SNIP 160 from init, ESPN search <= 300 + 50
    imp = rows["imp"]
    assert imp["levels"] == 24 and imp["level_steps"] == step("imp_level")
    assert imp["budget_steps"] == spe + 24 * step("imp_level")
    assert rows["snip"]["budget_steps"] == step("from_init")
    e = rows["espn-finetune"]
    assert e["search_steps"] <= step("search_cap")
    assert e["budget_steps"] == spe + e["search_steps"] + step("finetune")
    assert all(r.get("recipe") == "paper" for m, r in rows.items() if m != "dense")
    assert (tmp_path / "espn_resnet_paper_tiny.json").exists()


def test_espn_resnet_full_tiny(tmp_path, monkeypatch):
    monkeypatch.setattr(espn_resnet, "load_data", lambda cfg, seed: synthetic((3, 32, 32), seed=seed))
    espn_resnet.main(["--full", "--tiny", "--seeds", "0", "--sparsities", "0.9", "--out", str(tmp_path),
                      "--methods", "espn-finetune", "imp", "snip", "--controls"])
    rows = rows_of(tmp_path / "espn_resnet")
    assert {r["method"] for r in rows} == {"dense", "espn-finetune", "imp", "snip"}
    assert all(r["setup"] == "resnet32w2-cifar10-tiny" for r in rows)


def test_tpp_controls_fast_tiny(tmp_path):
    tpp_controls.main(["--tiny", "--seeds", "0", "--ratios", "0.9", "--out", str(tmp_path)])
    d = json.loads((tmp_path / "tpp_controls_mlp7_mnist5k_tiny.json").read_text())
    sel = d["selection"][0]
    assert sel["seed"] == 100 and sel["chosen"] in sel["mean_best_val"]
    runs = [r for r in d["rows"] if r["method"] != "dense"]
    assert {r["method"] for r in runs} == set(tpp_controls.METHODS)
    assert {r["table"] for r in runs} == {"paper-recipe", "budget-matched"}
    tpp = next(r for r in runs if r["method"] == "TPP" and r["table"] == "paper-recipe")
    l1 = next(r for r in runs if r["method"] == "L1" and r["table"] == "budget-matched")
    assert l1["budget_steps"] == tpp["budget_steps"]  # budget-matched: L1 fine-tunes TPP's regularisation too
    for r in runs:
        assert {"mean", "std", "min", "max", "cond"} <= set(r["jsv_after_prune"])
    orth = next(r for r in runs if r["method"] == "FreshOrth")
    assert abs(orth["jsv_after_prune"]["mean"] - 1) < 1e-3


def test_tpp_controls_sweep_and_full_tiny(tmp_path, monkeypatch):
    tpp_controls.main(["--sweep", "--tiny", "--out", str(tmp_path)])
    d = json.loads((tmp_path / "tpp_controls_mlp7_mnist1d_sweep_tiny.json").read_text())
    assert {r["method"] for r in d["rows"]} == {"dense", "L1", "L1+OrthP", "TPP"}
    monkeypatch.setattr(tpp_controls, "load", lambda cfg, seed, n=None: synthetic((1, 32, 32), seed=seed))
    tpp_controls.main(["--full", "--tiny", "--seeds", "0", "--ratios", "0.8", "--methods", "L1", "TPP",
                       "--out", str(tmp_path / "full")])
    d = json.loads((tmp_path / "full" / "tpp_controls_mlp7_mnist_tiny.json").read_text())
    assert {r["method"] for r in d["rows"]} == {"dense", "L1", "TPP"}


def test_tpp_resnet_budget_tiny(tmp_path):
    import tpp_resnet_budget

    out = tmp_path / "b.json"
    tpp_resnet_budget.main(["--tiny", "--seeds", "0", "--out", str(out)])
    d = json.loads(out.read_text())
    assert {r["method"] for r in d["rows"]} == {"L1", "L1+OrthP"}
    assert all(r["budget_steps"] > 0 and r["table"] == "budget-matched" for r in d["rows"])


def test_tpp_resnet_budget_matched_rows_come_from_the_same_dense_model(tmp_path, monkeypatch):
    """tpp_resnet.py --budget-matched L1: the control runs in the same process as TPP, from the
    same dense model, fine-tuned for the paper recipe's epochs plus TPP's regularisation steps."""
    import copy as _copy

    import tpp_mlp7
    import tpp_resnet

    real_load = tpp_mlp7.datasets.load
    monkeypatch.setattr(tpp_mlp7.datasets, "load", lambda name, **kw: real_load(
        "synthetic", shape=(1, 1, 40), n_train=256, n_test=64, val_fraction=0.1, seed=kw.get("seed", 0)))
    cfg = _copy.deepcopy(tpp_resnet.FAST)
    cfg.update(seeds=[0], ratios=[0.5], methods=["L1", "TPP"], lrs=[1e-3], jsv_samples=4,
               model_options={"width": 0.25}, budget_matched=["L1"], budget_lrs=[1e-3], tpp_reg_steps=16)
    cfg["pretrain"] = {**cfg["pretrain"], "epochs": 1, "milestones": []}
    cfg["finetune"] = {**cfg["finetune"], "epochs": 2, "milestones": [1]}
    cfg["tpp"] = {"preset": "bench", "delta": 0.5, "every": 1, "stabilise": 4, "zero_every": 2}
    res = tpp_mlp7.run(cfg, tmp_path / "r.json", log=lambda s: None)
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"L1", "TPP", "L1 (budget-matched)"}
    spe = -(-256 * 9 // 10 // cfg["finetune"]["batch_size"])  # synthetic: 256 train, 10 % validation
    assert rows["L1"]["epochs"] == 2 and rows["L1 (budget-matched)"]["epochs"] == 2 + round(16 / spe)
    assert rows["L1 (budget-matched)"]["table"] == "budget-matched"
    assert rows["L1 (budget-matched)"]["acc_after_prune"] == rows["L1"]["acc_after_prune"]  # the same slim net


def test_espn_resnet_gmp_selects_only_epochs_at_the_final_sparsity(monkeypatch):
    """A denser early epoch with the best validation accuracy must not be the one reported."""
    from prunekit.training.trainer import TrainResult

    cfg = espn_resnet.FAST
    data = synthetic((1, 1, 40))
    spe = -(-len(data.train) // cfg["dense"]["batch_size"])
    X = cfg["x_epochs"] * spe

    def fake_train(net, data_, hp, steps, callbacks=(), seed=0, eval_test=True):
        end = callbacks[0].end
        hist = [{"step": end - 1, "val_acc": 0.99, "test_acc": 0.98, "train_acc": 1.0},  # before the ramp ends
                {"step": end, "val_acc": 0.70, "test_acc": 0.69, "train_acc": 0.7},
                {"step": X, "val_acc": 0.60, "test_acc": 0.61, "train_acc": 0.6}]
        return TrainResult(history=hist, final_test_acc=0.61, best_test_acc=0.98, best_val_acc=0.99,
                           test_at_best_val=0.98, steps=steps)

    monkeypatch.setattr(espn_resnet, "train_steps", fake_train)
    torch.manual_seed(0)
    dense = espn_resnet.build(cfg, data)
    r = espn_resnet.run_method(cfg, "gmp", 0.9, 0, data, dense, None, {"budget_steps": 10}, {})
    assert r["val_selected_acc"] == 0.69 and r["best_acc"] == 0.69 and r["final_acc"] == 0.61
    assert r["selected_from_step"] == int(0.75 * X)
