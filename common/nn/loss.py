"""A detection loss that is an exact sum of per-image terms, as DP-SGD needs.

Ultralytics' `v8DetectionLoss` divides by a target-score sum taken over the whole batch, so the gradient of one
image depends on the other images of the batch. Here each image is normalised by its own target-score sum: the
term of image i equals Ultralytics' loss of image i taken alone (a batch of one), whatever else is in the batch.
Assignment (task-aligned) is already per image and runs on detached predictions, so it is reused unchanged.
"""

from __future__ import annotations

import torch
from ultralytics.utils.loss import v8DetectionLoss
from ultralytics.utils.metrics import bbox_iou
from ultralytics.utils.tal import bbox2dist, make_anchors

from common import offline  # noqa: F401


class PerImageDetectionLoss(v8DetectionLoss):
    """Box (CIoU), classification (BCE) and DFL losses, one weighted sum per image."""

    def per_image(
        self, preds: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the loss of each image, shape (B,), and its parts (B, 3) = box, cls, dfl after gains."""
        preds = self.parse_output(preds)
        pred_distri = preds["boxes"].permute(0, 2, 1).contiguous()
        pred_scores = preds["scores"].permute(0, 2, 1).contiguous()
        anchor_points, stride_tensor = make_anchors(preds["feats"], self.stride, 0.5)
        dtype, bs = pred_scores.dtype, pred_scores.shape[0]
        imgsz = torch.tensor(preds["feats"][0].shape[2:], device=self.device, dtype=dtype) * self.stride[0]

        targets = torch.cat((batch["batch_idx"].view(-1, 1), batch["cls"].view(-1, 1), batch["bboxes"]), 1)
        targets = self.preprocess(targets.to(self.device), bs, scale_tensor=imgsz[[1, 0, 1, 0]])
        gt_labels, gt_bboxes = targets.split((1, 4), 2)
        mask_gt = gt_bboxes.sum(2, keepdim=True).gt_(0.0)
        pred_bboxes = self.bbox_decode(anchor_points, pred_distri)
        _, target_bboxes, target_scores, fg_mask, _ = self.assigner(
            pred_scores.detach().sigmoid(),
            (pred_bboxes.detach() * stride_tensor).type(gt_bboxes.dtype),
            anchor_points * stride_tensor,
            gt_labels,
            gt_bboxes,
            mask_gt,
        )
        norm = target_scores.sum((1, 2)).clamp(min=1)  # per image, where Ultralytics uses the batch total
        cls = self.bce(pred_scores, target_scores.to(dtype)).sum((1, 2)) / norm

        weight = target_scores.sum(-1) * fg_mask  # (B, A): zero away from the assigned anchors
        target_bboxes = target_bboxes / stride_tensor
        iou = bbox_iou(pred_bboxes, target_bboxes, xywh=False, CIoU=True).squeeze(-1)
        box = ((1.0 - iou) * weight).sum(1) / norm
        reg_max = self.bbox_loss.dfl_loss.reg_max
        ltrb = bbox2dist(anchor_points, target_bboxes, reg_max - 1)
        dfl = self.bbox_loss.dfl_loss(pred_distri.view(-1, reg_max), ltrb.view(-1, 4)).view(bs, -1)
        dfl = (dfl * weight).sum(1) / norm

        parts = torch.stack((box * self.hyp.box, cls * self.hyp.cls, dfl * self.hyp.dfl), 1)
        return parts.sum(1), parts.detach()
