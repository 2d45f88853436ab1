"""benchmarks/gpu_check.sh --cpu-smoke: the GPU check's code paths at tiny sizes on a CPU (the check itself
needs a CUDA machine; this proves the script runs end to end and writes every section)."""
import re
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_smoke(tmp_path):
    out = tmp_path / "gpu.md"
    t = time.time()
    p = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu-smoke", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    took = time.time() - t
    print(f"gpu_check --cpu-smoke: {took:.0f} s")
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    text = out.read_text()
    for title in ("## Machine", "## Kernel tests", "## Kernels vs their torch references", "## Engine AR vs HF generate",
                  "## Tree verification", "## Total"):
        assert title in text, title
    assert "FAILED" not in text and re.search(r"\d+ passed", text)
    row = re.search(r"\| random tiny \| 8 \| [\d.]+ \| [\d.]+ \| \*\*[\d.]+x\*\* \| True \|", text)
    assert row, text[-2000:]                                       # same greedy ids as HF generate
    diffs = [float(x) for x in re.findall(r"\| random tiny \| \d+ \| [\d.]+ \| [\d.]+ \| [\d.]+x \| ([\d.e+-]+) \|", text)]
    assert len(diffs) == 3 and max(diffs) < 1e-3                    # the tree kernel's logits match SDPA's
    assert took < 120
