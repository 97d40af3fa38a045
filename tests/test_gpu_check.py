"""The GPU check script runs end to end (here on the CPU, tiny) and writes its report."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


def test_gpu_check_writes_a_report_and_step_times_plan_can_read(tmp_path):
    args = ["--device", "cpu", "--width", "0.0625", "--epochs", "1", "--images", "100"]
    code = gpu_check.main([*args, "--models", "logreg", "lenet5", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {r["model"]: r for r in report["rows"]}
    assert set(rows) == {"logreg", "lenet5"}
    for r in rows.values():
        assert r["images_per_s"] > 0 and r["lambda_max"] > 0 and r["trace_se"] >= 0
        assert r["frobenius"] > 0 and r["measure_seconds"] > 0 and r["measure_epochs"] > 0
    assert rows["logreg"]["parameters"] == 7850  # the paper's MNIST logistic regression
    from flatness.results.plan import read_step_times

    times = read_step_times(tmp_path / "step_times.json")
    keys = {"logreg|0.0625|mnist|128", "lenet5|0.0625|mnist|128"}
    assert set(times) == keys | {f"{k}|hvp" for k in keys}
    assert "| lenet5 |" in (tmp_path / "report.md").read_text()
