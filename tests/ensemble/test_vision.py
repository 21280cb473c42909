"""The image models and one member's training and evaluation (memaudit.ensemble.vision)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from memaudit.config import ImageConfig, TrainConfig
from memaudit.ensemble.vision import ImageTask, build_model
from memaudit.errors import MemauditError


@pytest.mark.parametrize("name", ["resnet-tiny", "resnet20", "resnet18"])
def test_models_keep_small_images(name):
    torch.manual_seed(0)
    model = build_model(name, 7).eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 7)
    if name == "resnet18":
        # The CIFAR stem: 3x3 stride 1, no max-pool.
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
        assert isinstance(model.maxpool, torch.nn.Identity)


def test_unknown_model():
    with pytest.raises(MemauditError, match="not an image model"):
        build_model("resnet9000", 10)


def _task(n=24, pad=2, flip=True, epochs=2):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(n) % 3
    cfg = TrainConfig(epochs=epochs, lr=0.05, batch_size=8, weight_decay=5e-4)
    img = ImageConfig(crop_padding=pad, flip=flip)
    return ImageTask(images, labels, 3, "resnet-tiny", cfg, img, 0, torch.device("cpu"), 16)


def test_members_are_independent_and_deterministic():
    task = _task()
    subset = np.arange(0, 24, 2)
    a, b = task.fresh(), task.fresh()
    # Every member starts from the same weights but owns them (and its BatchNorm statistics).
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.bn1.running_mean.data_ptr() != b.bn1.running_mean.data_ptr()
    stats_a = task.train(a, subset, seed=5)
    assert not torch.equal(a.bn1.running_mean, b.bn1.running_mean)  # b untouched
    task.train(b, subset, seed=5)
    la, ea = task.evaluate(a)
    lb, eb = task.evaluate(b)
    assert np.array_equal(la, lb) and np.array_equal(ea["correct"], eb["correct"])
    assert stats_a.steps == 2 * 2 and len(stats_a.epoch_losses) == 2
    c = task.fresh()
    task.train(c, subset, seed=6)  # another seed: another data order and augmentation
    assert not np.array_equal(task.evaluate(c)[0], la)


def test_evaluate_is_per_image_cross_entropy_in_eval_mode():
    task = _task()
    model = task.fresh()
    task.train(model, np.arange(24), seed=1)
    losses, extra = task.evaluate(model)
    model.eval()
    with torch.no_grad():
        logits = model(task.x)
    expect = torch.nn.functional.cross_entropy(logits, task.y, reduction="none").double().numpy()
    assert losses.shape == (24,) and losses.dtype == np.float64
    np.testing.assert_allclose(losses, expect, rtol=1e-6)
    assert np.array_equal(extra["correct"], (logits.argmax(1) == task.y).numpy())
    assert not model.training


def test_augmentation():
    gen = torch.Generator().manual_seed(0)
    plain = _task(pad=0, flip=False)
    idx = torch.arange(4)
    assert torch.equal(plain._batch(idx, gen), plain.x[:4])  # off: the images themselves
    task = _task(pad=2, flip=True)
    b1 = task._batch(idx, torch.Generator().manual_seed(3))
    b2 = task._batch(idx, torch.Generator().manual_seed(3))
    assert torch.equal(b1, b2) and b1.shape == (4, 3, 8, 8)
    # Each augmented image is a shifted (and maybe mirrored) window of the padded original.
    for k in range(4):
        ok = False
        for img in (b1[k], b1[k].flip(2)):
            for dy in range(5):
                for dx in range(5):
                    ok |= torch.equal(img, task.x_padded[k, :, dy : dy + 8, dx : dx + 8])
        assert ok


def test_divergence_is_reported():
    from memaudit.ensemble.train import TrainingDiverged

    task = _task()
    task.cfg = SimpleNamespace(epochs=1, lr=float("inf"), batch_size=8, weight_decay=0.0)
    with pytest.raises(TrainingDiverged):
        model = task.fresh()
        task.train(model, np.arange(24), seed=0)
        task.train(model, np.arange(24), seed=0)
