"""The README's two commands install what each needs: `make run` the package alone (train,
evaluate, samples and predict draw nothing), `make test` the `test` extra too. Read from
`make -n` (what make would run, nothing run) against a venv that does not exist yet."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")


def _pip_installs(target: str, tmp_path: Path) -> list[str]:
    """What `pip install -e` is given by `make -n TARGET` on a fresh venv."""
    r = subprocess.run(
        ["make", "-n", target, f"VENV={tmp_path / 'venv'}", f"FASHION_MNIST_DIR={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return re.findall(r"pip install -e (\S+)", r.stdout)


def test_make_run_installs_the_package_without_the_test_extra(tmp_path):
    assert _pip_installs("run", tmp_path) == ['"."']


def test_make_test_adds_the_test_extra(tmp_path):
    assert _pip_installs("test", tmp_path) == ['"."', '".[test]"']
    assert _pip_installs("test-fast", tmp_path) == ['"."', '".[test]"']
