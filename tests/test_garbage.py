"""The collector setting every qdedup process gets on importing the package (transforms/garbage.py)."""
import subprocess
import sys

from transforms.garbage import THRESHOLDS


def _thresholds_after_import(before: str) -> str:
    code = f"import gc; {before}; import transforms; print(gc.get_threshold())"
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def test_importing_qdedup_sets_the_collector_and_keeps_a_users_own_setting():
    assert _thresholds_after_import("pass") == str(THRESHOLDS)
    assert _thresholds_after_import("gc.set_threshold(1000, 5, 5)") == "(1000, 5, 5)"
