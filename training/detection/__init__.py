"""Foundations for rotated / horizontal object detection (Oriented R-CNN style).

``boxes``: conventions (le90 rotated boxes), conversions and box coders; ``ops``: rotated IoU, NMS and
RoI Align in plain PyTorch; ``datasets``: DOTA / DIOR(-R) readers and crops; ``evaluation``: DOTA/VOC AP.
"""
