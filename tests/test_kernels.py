"""Runs the kernel tests (tests/test_kernels_interp.py) under Triton's CPU interpreter.

They need TRITON_INTERPRET=1 before triton is first imported, which a shared pytest session cannot
guarantee (loading any transformers model imports triton), so they run in a fresh process.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


def test_kernels_under_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env.pop("DECODING_LAB_FORCE_TORCH", None)
    cmd = [sys.executable, "-m", "pytest", "tests/test_kernels_interp.py", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    summary = re.search(r"(\d+) passed", proc.stdout)
    assert summary and int(summary.group(1)) >= 101 and "skipped" not in proc.stdout.splitlines()[-1], tail
