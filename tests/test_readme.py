"""Every Python snippet in the README runs as written, on its own, in a fresh interpreter.

Only the training lengths are shortened (``epochs=N`` -> ``epochs=1``, ``EPOCHS = N`` ->
``EPOCHS = 2``) so the suite stays fast; imports, data loading and every call are the
README's own."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def snippets():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def shorten(code: str) -> str:
    code = re.sub(r"\bepochs=\d+", "epochs=1", code)
    return re.sub(r"^EPOCHS = \d+$", "EPOCHS = 2", code, flags=re.M)


def test_readme_has_the_snippets_we_run():
    assert len(snippets()) >= 4


@pytest.mark.parametrize("i", range(len(snippets())))
def test_readme_snippet_runs_in_a_fresh_interpreter(tmp_path, i):
    code = shorten(snippets()[i])
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, f"snippet {i} failed:\n{code}\n---\n{out.stderr[-3000:]}"
    if "allclose" in code:
        assert out.stdout.strip().endswith("True")
