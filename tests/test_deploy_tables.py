"""The deployment-speed README is generated from the committed JSON and must match it."""
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "deploy_tables.py"


def test_readme_deploy_matches_the_json():
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_top_readme_latency_figures_are_the_committed_ones():
    """The latency figures README.md quotes in prose, recomputed from the JSON they come from."""
    import json
    import statistics

    root = SCRIPT.parents[1]
    readme = " ".join((root / "README.md").read_text().split())
    res = root / "benchmarks" / "results"
    plan = {(r["model"], r["run"]): r for r in json.loads((res / "latency_planning_curve.json").read_text())["rows"]}
    fresh = [plan[("resnet56 b64", "fresh table")], plan[("bert-base b1 seq128", "fresh table")]]
    cached = [plan[("resnet56 b64", "cached table")], plan[("bert-base b1 seq128", "cached table")]]
    assert (f"fresh table took {fresh[0]['planning_s']:.0f} s for ResNet-56 at batch 64 and "
            f"{fresh[1]['planning_s']:.0f} s for a BERT-base-sized encoder") in readme
    assert f"({cached[0]['planning_s']:.0f} s and {cached[1]['planning_s']:.0f} s with the table cached)" in readme
    assert all(abs(r["achieved"] / 2 - 1) <= 0.1 for r in plan.values())  # "within 10% of 2x"
    share = json.loads((res / "latency_accuracy_vgg11-narrow-share.json").read_text())

    def acc(sp, method):
        return statistics.mean(r["val_selected_acc"] * 100 for r in share["rows"]
                                if r["requested_speedup"] == sp and r["method"] == method)

    for sp in (2.0, 3.0):
        ours, uni = acc(sp, "latency-aware-share"), acc(sp, "uniform-l1@latency-aware-share")
        assert f"{ours:.2f} %" in readme and f"{uni:.2f} %" in readme
    behind = sum(a["val_selected_acc"] < b["val_selected_acc"] for a in share["rows"] for b in share["rows"]
                 if a["requested_speedup"] == b["requested_speedup"] == 2.0 and a["seed"] == b["seed"]
                 and a["method"] == "latency-aware-share" and b["method"] == "uniform-l1@latency-aware-share")
    assert f"behind in {behind} of 6 seeds" in readme
    # the uncapped knapsack's 3x lead does not repeat in that run: both figures are quoted
    la3, uni3 = acc(3.0, "latency-aware"), acc(3.0, "uniform-l1")
    assert f"{la3:.2f} % against {uni3:.2f} % for uniform L1 at the same measured" in readme
    sens = json.loads((res / "latency_accuracy_vgg11-narrow-sens.json").read_text())
    for sp in (2.0, 3.0):
        rows = {(r["method"], r["seed"]): r["val_selected_acc"] for r in sens["rows"] if r["requested_speedup"] == sp}
        ours = statistics.mean(v * 100 for (m, _), v in rows.items() if m == "latency-aware-sens")
        uni = statistics.mean(v * 100 for (m, _), v in rows.items() if m == "uniform-l1@latency-aware-sens")
        ahead = sum(rows[("latency-aware-sens", s)] > rows[("uniform-l1@latency-aware-sens", s)] for s in range(6))
        assert f"{ours:.2f} % against {uni:.2f} %" in readme and f"ahead in {ahead} of 6" in readme
