"""benchmarks/few_step.py --quick runs end to end (a smoke test; the measured numbers come from a full run)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_few_step_benchmark_quick_runs():
    # about 10 s on one core: every method trains through diffedu.engine.fit, samples at NFE 1, 2, 5 and is scored
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "few_step.py"), "--quick", "--dataset", "two_moons"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("two_moons:") and "floors: sliced W2" in line for line in lines), out.stdout[-2000:]
    for method in ("FM", "CT", "CD", "sCT", "sCD", "CTM", "MeanFlow"):
        nfes = {int(line.split("|")[0].split()[1]) for line in lines if line.split(" ")[0] == method and "|" in line}
        assert nfes == ({1, 2, 5, 50} if method == "FM" else {1, 2, 5}), (method, out.stdout[-2000:])
    assert "goals (two moons" in out.stdout
