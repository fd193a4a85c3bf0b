"""Tests of experiments.reproduce: the table from summaries, and a tiny grid end to end."""

import json
import os

import numpy as np
import pytest

from experiments import reproduce

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHIVE = os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg.tar.gz")


def _fake_summary(path, seed, top1, bal, counts):
  os.makedirs(path, exist_ok=True)
  summary = {
      "test_top1": top1, "test_balanced_accuracy": bal, "test_many": 0.9, "test_medium": None,
      "test_few": 0.1, "test_macro_f1": 0.5, "per_class_accuracy": [0.9, 0.5, 0.1],
      "class_counts": counts, "wall_time_s": 60.0, "device_count": 1, "process_count": 1,
      "versions": {"jax": "x"},
      "config": {"seed": seed, "num_epochs": 2, "batch_size": 8,
                 "model": {"name": "resnet8", "width": 8},
                 "optimizer": {"lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4},
                 "schedule": {"name": "step", "warmup_epochs": 1, "boundaries": [1],
                              "factors": [0.1]},
                 "data": {"source": "digits", "name": "digits", "profile": "exp"}},
  }
  with open(os.path.join(path, "summary.json"), "w") as f:
    json.dump(summary, f)


def test_collect_mean_sd_and_report(tmp_path):
  root = tmp_path / "runs"
  for loss, tops in (("ce", (0.70, 0.74)), ("cce_paper", (0.72, 0.78))):
    for ratio in (10, 100):
      for seed, top1 in enumerate(tops):
        _fake_summary(str(root / f"r{ratio}" / loss / f"seed{seed}"), seed, top1 - ratio / 1000,
                      top1, [120, 50, 5])
  # A third seed was never run: it must simply be absent, not counted.
  rows = reproduce.collect(str(root), ["ce", "cce_paper"], [10.0, 100.0], [0, 1, 2])
  assert [(r["loss"], r["ratio"]) for r in rows] == [
      ("ce", 10.0), ("cce_paper", 10.0), ("ce", 100.0), ("cce_paper", 100.0)]
  ce10 = rows[0]
  assert ce10["seeds"] == [0, 1]
  errors = [100 * (1 - (0.70 - 0.01)), 100 * (1 - (0.74 - 0.01))]
  np.testing.assert_allclose(ce10["stats"]["top1_error"]["mean"], np.mean(errors))
  np.testing.assert_allclose(ce10["stats"]["top1_error"]["sd"], np.std(errors, ddof=1))
  assert ce10["stats"]["medium"] == {"mean": None, "sd": None}
  np.testing.assert_allclose(rows[3]["stats"]["balanced_accuracy"]["mean"], 75.0)

  out = tmp_path / "results"
  md = reproduce.write_report("demo_quick", rows, quick=True, command="cmd", out_dir=str(out),
                              grid={"losses": ["ce", "cce_paper"], "ratios": [10, 100],
                                    "seeds": [0, 1, 2], "config": "x"})
  text = open(md).read()
  assert "REDUCED" in text and "runs finished: 8 of 12" in text
  assert "| cce_paper | 100 | 2 | 35.00 ± 4.24 | 75.00 ± 4.24 | 90.00 ± 0.00 | n/a |" in text
  for png in ("demo_quick_per_class_r10.png", "demo_quick_per_class_r100.png",
              "demo_quick_vs_ratio.png"):
    assert (out / png).stat().st_size > 1000
  twin = json.load(open(out / "demo_quick.json"))
  assert twin["quick"] and len(twin["rows"]) == 4


def test_run_args_cover_every_variant():
  suite = reproduce.SUITES["cifar10_lt"]
  for loss in reproduce.LOSSES:
    args = reproduce.run_args(suite, "cfg.py", loss, 100, 3, 200, None)
    assert f"--config.loss.name={reproduce.LOSSES[loss]['loss']}" in args
    assert "--config.seed=3" in args and "--config.data.subset_seed=3" in args
  ldam = reproduce.run_args(suite, "cfg.py", "ldam_drw", 100, 0, 200, None)
  assert "--config.loss.drw_epoch=160" in ldam and "--config.model.cosine_head=True" in ldam
  code = reproduce.run_args(suite, "cfg.py", "cce_code", 100, 0, 200, None)
  assert "--loss_hparam=gamma=1.0" in code and "--loss_hparam=normalizer=k" in code


def test_unknown_loss_variant_is_refused(capsys):
  with pytest.raises(SystemExit):
    reproduce.main(["--suite=tiny", "--losses=ce,nope", "--dry_run"])
  assert "unknown loss variant(s) ['nope']" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(ARCHIVE), reason="offline CIFAR-10 copy not in ../shared")
def test_tiny_grid_end_to_end_and_resumable(tmp_path, capsys):
  argv = ["--suite=tiny", "--seeds=0", f"--workdir={tmp_path / 'runs'}",
          f"--results_dir={tmp_path / 'results'}"]
  reproduce.main(argv)
  text = open(tmp_path / "results" / "tiny.md").read()
  for loss in ("ce", "cce_paper"):
    for ratio in ("10", "2"):
      assert f"| {loss} | {ratio} | 1 |" in text
  assert (tmp_path / "results" / "tiny_vs_ratio.png").exists()
  capsys.readouterr()
  reproduce.main(argv)  # everything is finished: nothing runs again
  out = capsys.readouterr().out
  assert out.count("done already") == 4
