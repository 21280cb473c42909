"""Image classifiers for the image path: CIFAR-style ResNets, one member's training loop, and its
evaluation (per-image cross-entropy and correctness).

Models (``--model``), all built from torchvision's ResNet code:

* ``resnet18``: torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 first convolution, no
  max-pool), 11.2M parameters: the paper's kind of model, for a GPU.
* ``resnet20``: He et al.'s CIFAR ResNet-20 (3 stages of 3 torchvision BasicBlocks, widths
  16/32/64), 0.27M parameters.
* ``resnet-tiny``: the same with one block per stage (a ResNet-8), 78k parameters: the CPU
  model of the bundled demo.

Every member starts from the same initial weights (drawn once from the ensemble seed), so
members differ only by their subset and their seeded data order and augmentation, as in the text
path. BatchNorm: each member is its own module with its own running statistics (built by
``deepcopy`` of the initial module, never shared between members); it trains in train mode and is
evaluated in eval mode, i.e. with its running statistics, so a record's loss does not depend on
which other records share its evaluation batch.

Training: SGD with Nesterov momentum 0.9, linear warm-up over the first 10% of steps then linear
decay to zero, mean cross-entropy over each batch; augmentation is a random crop from a
zero-padded image (``crop_padding`` pixels, 0: none) and a horizontal flip with probability 1/2
(``flip``), drawn from a ``torch.Generator`` seeded with the member's seed. On CPU the loop is
bit-for-bit deterministic for a given thread count.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models.resnet import BasicBlock, conv1x1

# Image training defaults live with TrainConfig's fields (the options' one source).
from memaudit.config import IMAGE_TRAIN_DEFAULTS  # noqa: F401 (re-exported)
from memaudit.ensemble.train import TrainingDiverged, TrainStats
from memaudit.errors import MemauditError
from memaudit.modality import IMAGE

# name -> (description for the terminal and docs)
VISION_MODELS = {
    "resnet-tiny": "CIFAR ResNet-8 (widths 16/32/64, one block per stage)",
    "resnet20": "CIFAR ResNet-20 (widths 16/32/64, three blocks per stage)",
    "resnet18": "ResNet-18 with a CIFAR stem (3x3 conv, no max-pool)",
}


def is_vision_model(name: str) -> bool:
    return name in VISION_MODELS


class CifarResNet(nn.Module):
    """3x3 stem and stages of torchvision BasicBlocks (the CIFAR ResNets of He et al. 2016)."""

    def __init__(self, blocks: list[int], widths: list[int], num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, inplanes = [], widths[0]
        for k, (n, width) in enumerate(zip(blocks, widths, strict=True)):
            stride = 1 if k == 0 else 2
            down = None
            if stride != 1 or inplanes != width:
                down = nn.Sequential(conv1x1(inplanes, width, stride), nn.BatchNorm2d(width))
            layers = [BasicBlock(inplanes, width, stride, down)]
            layers += [BasicBlock(width, width) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            inplanes = width
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.adaptive_avg_pool2d(self.stages(x), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def build_model(name: str, num_classes: int) -> nn.Module:
    """A freshly initialised model (uses the global torch RNG: seed it first)."""
    if name == "resnet-tiny":
        return CifarResNet([1, 1, 1], [16, 32, 64], num_classes)
    if name == "resnet20":
        return CifarResNet([3, 3, 3], [16, 32, 64], num_classes)
    if name == "resnet18":
        model = tv_resnet18(weights=None, num_classes=num_classes)
        # The CIFAR stem: a 7x7 stride-2 convolution and a max-pool would leave 8x8 maps of a
        # 32x32 image after the stem; small images keep their resolution instead.
        model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
        return model
    raise MemauditError(f"--model: '{name}' is not an image model ({', '.join(VISION_MODELS)})")


class ImageTask:
    """The image path's member task for :func:`memaudit.ensemble.member.train_ensemble`: a
    fresh copy of the shared initial weights, one member's training, and its evaluation on every
    image."""

    arrays = ("correct",)  # per-model arrays saved beside the losses (models/NNNNN.correct.npy)
    modality = IMAGE

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        num_classes: int,
        model_name: str,
        train_cfg,
        image_cfg,
        init_seed: int,
        device: torch.device,
        eval_batch_size: int = 256,
    ) -> None:
        self.device = device
        self.cfg = train_cfg
        self.image_cfg = image_cfg
        self.eval_batch_size = eval_batch_size
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        # Per-channel standardisation with the dataset's own statistics (known before training).
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3)
        self.x = ((x - mean) / std).contiguous()
        self.y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        pad = image_cfg.crop_padding
        self.x_padded = F.pad(self.x, (pad, pad, pad, pad)) if pad else self.x
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.base = build_model(model_name, num_classes)
        self.n_params = sum(p.numel() for p in self.base.parameters())
        self.n_trainable = self.n_params

    def fresh(self) -> nn.Module:
        return copy.deepcopy(self.base).to(self.device)

    def _batch(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Augmented images idx: a random crop of the padded image, then a random flip."""
        pad = self.image_cfg.crop_padding
        h, w = self.x.shape[2], self.x.shape[3]
        n = len(idx)
        if pad:
            oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
            ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
            rows = (oy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w)[None, :])[:, None, None, :]
            src = self.x_padded[idx]
            batch = src[
                torch.arange(n)[:, None, None, None],
                torch.arange(3)[None, :, None, None],
                rows,
                cols,
            ]
        else:
            batch = self.x[idx]
        if self.image_cfg.flip:
            flip = torch.rand(n, generator=gen) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
        return batch

    def train(self, model: nn.Module, subset: np.ndarray, seed: int, on_step=None) -> TrainStats:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(seed)
        subset_t = torch.from_numpy(np.asarray(subset, dtype=np.int64))
        per_epoch = max(1, -(-len(subset) // cfg.batch_size))
        total = per_epoch * cfg.epochs
        warmup = max(1, total // 10)
        opt = torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=cfg.weight_decay,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: (
                (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
            ),
        )
        model.train()
        t0 = time.perf_counter()
        step, epoch_losses = 0, []
        for _ in range(cfg.epochs):
            order = subset_t[torch.randperm(len(subset_t), generator=gen)]
            total_loss, seen = 0.0, 0
            for lo in range(0, len(order), cfg.batch_size):
                idx = order[lo : lo + cfg.batch_size]
                if len(idx) < 2 and len(order) > 1:
                    continue  # BatchNorm cannot train on a batch of one
                xb = self._batch(idx, gen).to(self.device)
                yb = self.y[idx].to(self.device)
                loss = F.cross_entropy(model(xb), yb)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"training loss became {loss.item()} at step {step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                total_loss += loss.item() * len(idx)
                seen += len(idx)
                if on_step:
                    on_step(step, total, loss.item())
            epoch_losses.append(total_loss / max(seen, 1))
        return TrainStats(
            steps=step,
            seconds=time.perf_counter() - t0,
            final_loss=epoch_losses[-1] if epoch_losses else float("nan"),
            epoch_losses=epoch_losses,
        )

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(per-image cross-entropy in nats, float64 (N,), {"correct": bool (N,)}), in eval mode
        on the un-augmented images."""
        model.eval()
        losses, correct = [], []
        for lo in range(0, len(self.x), self.eval_batch_size):
            xb = self.x[lo : lo + self.eval_batch_size].to(self.device)
            yb = self.y[lo : lo + self.eval_batch_size].to(self.device)
            logits = model(xb).float()
            losses.append(F.cross_entropy(logits, yb, reduction="none").double().cpu())
            correct.append((logits.argmax(1) == yb).cpu())
        return torch.cat(losses).numpy(), {"correct": torch.cat(correct).numpy()}
