"""Mask R-CNN: the horizontal-box Faster R-CNN of training.detection.model (its own encoder, FPN, RPN, RoI
head) plus the shared mask head of training.detection.masks on the same FPN maps.

``forward(images)`` is the package graph: boxes N×P×4, scores N×P×K (as `detection`), masks N×P×M×M logits
of each row's best class (M = 2·mask_head.roi_size); every shape but the batch is static, so it exports with
the dynamo exporter. ``losses(images, targets)`` adds the mask loss to the detector's four.
"""
from typing import Dict, Sequence, Tuple

from torch import Tensor, nn

from training.detection.masks import MaskHead, MaskHeadConfig, best_class_mask_logits, mask_loss
from training.detection.model import Detector, DetectorSpec


class MaskRCNN(nn.Module):
    loss_keys = ("rpn_cls", "rpn_reg", "roi_cls", "roi_reg", "mask")

    def __init__(self, spec: DetectorSpec, mask_cfg: MaskHeadConfig):
        super().__init__()
        if spec.box_type != "hbox" or spec.architecture != "two_stage":
            raise ValueError("Mask R-CNN needs the two-stage horizontal-box detector (box_type hbox, two_stage)")
        self.detector = Detector(spec)
        self.mask_cfg = mask_cfg
        self.mask_head = MaskHead(spec.fpn_channels, spec.num_classes, mask_cfg)

    @property
    def mask_size(self) -> int:
        return 2 * self.mask_cfg.roi_size

    @property
    def size_divisor(self) -> int:
        return self.detector.size_divisor

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        det = self.detector
        fpn = det._features(images)
        boxes, scores = det._detect(fpn, (images.shape[-2], images.shape[-1]), None, images.dtype)
        masks = best_class_mask_logits(det, self.mask_head, fpn, boxes, scores, self.mask_cfg.roi_size)
        return boxes, scores, masks

    def losses(self, images: Tensor, targets: Sequence[Dict]) -> Dict[str, Tensor]:
        """targets: per image {"boxes": (M, 4) px, "labels": (M,), "masks": (M, H, W) bool}."""
        det = self.detector
        boxes_only = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        out, sampling = det.losses(images, boxes_only, return_sampling=True)
        out["mask"] = mask_loss(det, self.mask_head, sampling, [t["masks"] for t in targets],
                                self.mask_cfg.roi_size, self.mask_cfg.samples_per_image)
        return out
