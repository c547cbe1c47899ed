"""The deployment-speed README is generated from the committed JSON and must match it."""
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "deploy_tables.py"


def test_readme_deploy_matches_the_json():
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
