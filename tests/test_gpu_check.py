"""benchmarks/gpu_check.sh --cpu: the GPU check's every step runs on the CPU, so the script cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_on_the_cpu():
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu"], capture_output=True,
                          text=True, timeout=600, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu" and result["engine_max_abs_diff_vs_cpu"] == 0.0
    assert result["maps_max_abs_diff_vs_cpu"] == 0.0
    for batch in (4, 8):
        assert result[f"engine_images_per_s_b{batch}_fp32"] > 0
        assert result[f"engine_max_abs_err_b{batch}_fp32"] == 0.0
        assert 0 < result[f"engine_max_abs_err_b{batch}_bf16"] < 0.05  # bf16 autocast changes the numbers, a little
    assert result["workflow_train_device"] == "cpu" and result["finetune_amp"] == "none"
    assert result["decode_images_per_s_workers_0"] > 0 and any(k.startswith("decode_images_per_s_workers_") and
                                                               not k.endswith("_0") for k in result)
