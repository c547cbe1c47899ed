"""Every headline number in benchmarks/README*.md equals what the committed JSON gives."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_check_claims_passes():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "check_claims.py")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
