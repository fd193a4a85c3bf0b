"""benchmarks.bench_train_step --modes=profile: the script behind docs/training.md's profile
table."""

import re
import sys

from benchmarks import bench_train_step


def test_profile_groups_the_step(tmp_path, monkeypatch, capsys):
    argv = ["bench_train_step", "--modes=profile", "--model=resnet8", "--width=4"]
    argv += ["--batch_size=8", "--image_size=8", "--num_steps=1", f"--trace_dir={tmp_path}"]
    monkeypatch.setattr(sys, "argv", argv)
    bench_train_step.main()
    out = capsys.readouterr().out
    shares = [float(s) for s in re.findall(r"([\d.]+)%", out)]
    assert any(" conv " in line for line in out.splitlines()[1:]), out
    assert abs(sum(shares) - 100.0) < 1.0, out  # every timed op is in one group


def test_classify_reads_fusions():
    hlo = "\n".join(
        [
            "%fused_a (p: f32[2]) -> f32[2,2] {",
            "  ROOT %t = f32[2,2] transpose(%p), dimensions={1,0}",
            "}",
            "ENTRY %main (x: f32[2]) -> f32[2,2] {",
            "  ROOT %transpose_copy_fusion = f32[2,2] fusion(%x), kind=kLoop, calls=%fused_a",
            "}",
        ]
    )
    assert bench_train_step.classify(hlo) == {
        "t": "transpose",
        "transpose_copy_fusion": "transpose",
    }
