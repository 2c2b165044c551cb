import json

import pytest
import yaml
import torch
import torch.nn.functional as F

from training.__main__ import main
from training.checkpoint import load_checkpoint
from training.engine import build_optimizer, lr_factor
from training.segmentation.engine import make_sampler, train
from training.models import build_segmentor
from training_test_support import assert_resumed_run_equals_whole_run


pytestmark = pytest.mark.slow  # the whole file (README.md, Development): not in `make test-fast`


def test_a_few_iterations_on_real_crops_make_the_loss_fall(tiny_cfg):
    torch.manual_seed(0)
    model = build_segmentor(tiny_cfg.model).train()
    tiny_cfg.train.warmup_iters = 1
    optimizer, _ = build_optimizer(model, tiny_cfg, total_iters=30)
    images, labels = make_sampler(tiny_cfg).batch(0, 4)  # fixed batch of real LoveDA crops
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(images), labels, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses


def test_schedule_warms_up_then_decays():
    class Sched:
        warmup_iters, schedule, poly_power, min_lr_ratio = 10, "poly", 1.0, 0.0
    assert lr_factor(0, 110, Sched) == pytest.approx(0.1)
    assert lr_factor(9, 110, Sched) == pytest.approx(1.0)
    assert lr_factor(60, 110, Sched) == pytest.approx(0.5)
    Sched.schedule = "cosine"
    assert lr_factor(60, 110, Sched) == pytest.approx(0.5)
    assert lr_factor(110, 110, Sched) == pytest.approx(0.0)


def test_resume_reproduces_an_uninterrupted_run(tiny_cfg, tmp_path):
    whole = train(tiny_cfg, tmp_path / "whole", iters=6, evaluate_at_end=False, show_progress=False)
    train(tiny_cfg, tmp_path / "split", iters=6, evaluate_at_end=False, show_progress=False, stop_after=3)
    assert load_checkpoint(tmp_path / "split" / "latest.pt")["iteration"] == 3
    resumed = train(None, tmp_path / "split", resume=True, evaluate_at_end=False, show_progress=False)

    assert whole["iteration"] == 6
    assert_resumed_run_equals_whole_run(whole, resumed)
    assert whole["scheduler"]["last_epoch"] == resumed["scheduler"]["last_epoch"] == 6
    # And the run really moved: weights differ from a fresh model's.
    fresh = build_segmentor(tiny_cfg.model).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in whole["model"].items() if v.is_floating_point())


def test_train_command_ends_with_held_out_metrics(tiny_raw, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_raw))
    work_dir = tmp_path / "run"
    assert main(["train", "--config", str(config), "--work-dir", str(work_dir), "--iters", "2"]) == 0
    saved = json.loads((work_dir / "metrics.json").read_text())
    assert json.loads(capsys.readouterr().out)["mIoU"] == pytest.approx(saved["mIoU"])
    assert 0.0 <= saved["mIoU"] <= 1.0
    assert set(saved["per_class_iou"]) == {c["name"] for c in tiny_raw["data"]["classes"]}
    assert saved["pixels"] == 128 * 128  # Potsdam tile at 1/4 scale, no ignored pixels
    assert saved["evaluated_on"] == "potsdam/2_10_0_0_512_512.png (held out)"
    checkpoint = load_checkpoint(work_dir / "latest.pt")
    assert checkpoint["iteration"] == 2 and checkpoint["metrics"]["mIoU"] == pytest.approx(saved["mIoU"])
    assert "iter 2/2" in (work_dir / "train.log").read_text()


def test_ctrl_c_stops_after_the_iteration_with_a_resumable_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    import os
    import signal
    from training.data.sampler import CropSampler
    real_batch = CropSampler.batch

    def batch_then_interrupt(self, iteration, batch_size):
        if iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C during iteration 2
        return real_batch(self, iteration, batch_size)

    monkeypatch.setattr(CropSampler, "batch", batch_then_interrupt)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in the background (nohup, &)
    state = train(tiny_cfg, tmp_path, iters=6, evaluate_at_end=False, show_progress=False)
    assert state["iteration"] == 3
    assert load_checkpoint(tmp_path / "latest.pt")["iteration"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler restored
    monkeypatch.setattr(CropSampler, "batch", real_batch)
    assert train(None, tmp_path, resume=True, evaluate_at_end=False, show_progress=False)["iteration"] == 6
