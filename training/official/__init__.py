"""The official MTP finetuned models (ViTAE-Transformer/MTP `RS_Tasks_Finetune`) as model packages.

| module | what |
|---|---|
| `config_file.py` | reads an official (mmengine pure-Python) config as data, without executing it, `_base_` included |
| `datasets.py` | per dataset: classes and colours, GSD, the paper's metric and figures |
| `models.py` | recognises the config's family and builds the project's equivalent model (official key names) |
| `heads.py` | mmseg UPerHead, MTP's Open-CD UNetHead, mmpretrain LinearClsHead (inference) |
| `detection_models.py` | reads an official detector config (mmdet Faster R-CNN / RetinaNet, mmrotate Oriented R-CNN 1.x and 0.3.4) |
| `detectors.py` | those detectors at inference with official names: FPN, RPNHead / OrientedRPNHead, Shared2FCBBoxHead, RetinaHead |
| `detection_ops.py` | exact per-level greedy NMS (ONNX NonMaxSuppression), mmcv RoI Align (adaptive / rotated), official coders, anchors |
| `detection_parity.py` | matches two sets of final detections (official vs package, torch vs ONNX Runtime) |
| `weights.py` | reads official checkpoints without mmengine (inert unpickling), strict loading with a report |
| `importer.py` | `python -m training import-official`: config + checkpoint -> parity-checked model package |

The reference environment (`make reference`, `reference/`) proves these modules against the official
frameworks; `tests/training/test_official_import.py` re-checks the committed fixtures it writes.
"""
