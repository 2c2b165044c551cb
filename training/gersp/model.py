"""GeRSP (Huang et al., "Generic Knowledge Boosted Pre-training For Remote Sensing Images"): a student
encoder trained by two branches at once, with an EMA teacher.

* Remote-sensing contrastive learning (MoCo): student query q = norm(proj(pool(enc(view 1)))), teacher key
  k = norm(proj_t(pool(enc_t(view 2)))); InfoNCE over [q.k, q.queue] / T with the positive first.
  The queue holds `queue_size` keys of earlier batches; every rank's keys are all-gathered before
  enqueueing, so all ranks hold the same queue and advance the same pointer.
* Natural image auxiliary learning: a linear classifier on the student's pooled features, cross-entropy on
  labelled natural images (one student pass over both the queries and the natural images, as the official
  code).
* L = L_ct + alpha * L_ce. The teacher (encoder and projector) follows the student by EMA with momentum m,
  updated at the start of each step from the student's current weights (the official code's order); the
  teacher never gets gradients. MoCo's batch shuffle across ranks keeps BatchNorm from leaking the positive.

`model.encoder` is any encoder of training.models.encoders; its weights are what MTP pretraining starts from
(`encoder.pt` in the work dir, the layout MTP's `*_encoder.pth` files have).
"""
import copy
from typing import Dict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from training.gersp.config import GeRSPModelConfig
from training.models.encoders import build_encoder


class Projector(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def pooled(encoder: nn.Module, images: Tensor) -> Tensor:
    """Global average pool of the encoder's deepest map."""
    return encoder(images)[-1].mean(dim=(2, 3))


def gather_all(x: Tensor) -> Tensor:
    """Concatenation of `x` over every rank, in rank order (no gradient)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class GeRSP(nn.Module):
    def __init__(self, cfg: GeRSPModelConfig, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.encoder = build_encoder(cfg.encoder)
        dim = int(self.encoder.out_channels[-1])
        self.projector = Projector(dim, cfg.proj_hidden, cfg.feat_dim)
        self.classifier = nn.Linear(dim, num_classes)
        self.teacher_encoder = copy.deepcopy(self.encoder)
        self.teacher_projector = copy.deepcopy(self.projector)
        for p in [*self.teacher_encoder.parameters(), *self.teacher_projector.parameters()]:
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(cfg.feat_dim, cfg.queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.int64))
        self.register_buffer("shuffle_step", torch.zeros((), dtype=torch.int64))

    def student_teacher_pairs(self):
        return [*zip(self.encoder.parameters(), self.teacher_encoder.parameters()),
                *zip(self.projector.parameters(), self.teacher_projector.parameters())]

    @torch.no_grad()
    def update_teacher(self) -> None:
        m = self.cfg.momentum
        for s, t in self.student_teacher_pairs():
            t.mul_(m).add_(s.detach(), alpha=1.0 - m)

    @torch.no_grad()
    def keys(self, views: Tensor) -> Tensor:
        """Teacher keys of this rank's key views; with several ranks the views are shuffled across ranks
        first (every rank draws the same permutation) and the keys unshuffled after."""
        distributed = self.cfg.shuffle_bn and dist.is_initialized() and dist.get_world_size() > 1
        if not distributed:
            return F.normalize(self.teacher_projector(pooled(self.teacher_encoder, views)), dim=1)
        rank, n = dist.get_rank(), views.shape[0]
        everything = gather_all(views)
        gen = torch.Generator().manual_seed(int(self.shuffle_step))
        perm = torch.randperm(everything.shape[0], generator=gen).to(views.device)
        mine = everything[perm[rank * n:(rank + 1) * n]]
        k = F.normalize(self.teacher_projector(pooled(self.teacher_encoder, mine)), dim=1)
        all_k = gather_all(k)
        unshuffled = torch.empty_like(all_k)
        unshuffled[perm] = all_k
        return unshuffled[rank * n:(rank + 1) * n]

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Every rank's keys (all-gathered, rank order) replace the oldest entries; the pointer wraps."""
        keys = gather_all(keys.float())
        size = self.queue.shape[1]
        idx = (int(self.queue_ptr) + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[:, idx] = keys.t()
        self.queue_ptr.fill_((int(self.queue_ptr) + keys.shape[0]) % size)

    def forward(self, queries: Tensor, key_views: Tensor, natural: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        n = queries.shape[0]
        feats = pooled(self.encoder, torch.cat([queries, natural]))
        q = F.normalize(self.projector(feats[:n]), dim=1)
        self.update_teacher()
        k = self.keys(key_views)
        self.shuffle_step += 1
        l_pos = (q * k).sum(1, keepdim=True)
        l_neg = q @ self.queue.clone().detach().to(q.dtype)
        logits = torch.cat([l_pos, l_neg], dim=1).float() / self.cfg.temperature
        contrastive = F.cross_entropy(logits, torch.zeros(n, dtype=torch.int64, device=q.device))
        class_logits = self.classifier(feats[n:]).float()
        supervised = F.cross_entropy(class_logits, labels)
        self.enqueue(k)
        return {"loss": contrastive + self.cfg.alpha * supervised, "contrastive": contrastive,
                "supervised": supervised,
                "contrastive_acc": (logits.argmax(1) == 0).float().mean().detach(),
                "supervised_acc": (class_logits.argmax(1) == labels).float().mean().detach()}

    @torch.no_grad()
    def probe(self, queries: Tensor, key_views: Tensor, natural: Tensor, labels: Tensor) -> Dict[str, float]:
        """The two losses on a fixed batch without touching the teacher or the queue (eval mode): in-batch
        InfoNCE of the student's queries against the teacher's keys of the same images (the positive on the
        diagonal), and the classifier's cross-entropy on the natural images."""
        was_training = self.training
        self.eval()
        q = F.normalize(self.projector(pooled(self.encoder, queries)), dim=1)
        k = F.normalize(self.teacher_projector(pooled(self.teacher_encoder, key_views)), dim=1)
        target = torch.arange(len(q), device=q.device)
        out = {"contrastive": float(F.cross_entropy((q @ k.t()).float() / self.cfg.temperature, target)),
               "supervised": float(F.cross_entropy(self.classifier(pooled(self.encoder, natural)).float(), labels))}
        self.train(was_training)
        return out


def encoder_state(model_state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The student encoder's weights, unprefixed (what `encoder.checkpoint` of MTP and finetuning reads)."""
    return {k[len("encoder."):]: v for k, v in model_state.items() if k.startswith("encoder.")}
