"""Make the official MTP finetune code importable in the reference environment (.venv-ref) on a machine
without compiled mmcv / DCNv3 ops, and build official models from official configs.

What is replaced, and only here (never in backend/, mtp_qgis/ or training/):
* mmcv's compiled kernels (`mmcv._ext`, absent from mmcv-lite) by the pure-PyTorch stand-ins of
  `reference/mmcv_ext.py` (NMS, rotated NMS, RoIAlign, rotated RoIAlign; any other kernel raises when
  called). mmcv's Python wrappers (`mmcv.ops.batched_nms`, `RoIAlignRotated`, ...) stay the real ones.
* the compiled `DCNv3` extension by an empty module, and InternImage's `core_op` by the official
  pure-PyTorch `DCNv3_pytorch` of the same ops_dcnv3 package (same parameters, same math).
* SyncBN by BN (identical in eval mode; SyncBN needs a process group).

The official sources are not part of this repository: pass the folders of an MTP checkout
(github.com/ViTAE-Transformer/MTP) and an Open-CD checkout (github.com/likyoo/open-cd).
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

FINETUNE = {
    # framework -> (MTP sub-folder holding its RVSA_MTP / InternImage, folder of extra heads or None)
    "mmseg": ("RS_Tasks_Finetune/Semantic_Segmentation/mmseg/models/backbones", None),
    "mmpretrain": ("RS_Tasks_Finetune/Scene_Classification/mmpretrain/models/backbones", None),
    "opencd": ("RS_Tasks_Finetune/Change_Detection/opencd/models/backbones",
               "RS_Tasks_Finetune/Change_Detection/opencd/models/decode_heads"),
    "mmdet": ("RS_Tasks_Finetune/Horizontal_Detection/mmdet/models/backbones", None),
    "mmrotate": ("RS_Tasks_Finetune/Rotated_Detection/mmrotate1.x/mmrotate/models/backbones", None),
}
BACKBONE_MODULES = {"mmdet": ["vit_rvsa_mtp", "vit_rvsa_mtp_branches", "intern_image"],
                    "mmrotate": ["vit_rvsa_mtp", "vit_rvsa_mtp_branches", "intern_image"]}


def install_stubs() -> None:
    import mmcv  # the real, pure-Python package
    from reference import mmcv_ext
    sys.modules.setdefault("mmcv._ext", mmcv_ext.module())
    import mmcv.ops  # noqa: F401 - mmcv's real Python wrappers, on the stand-in kernels
    sys.modules.setdefault("DCNv3", types.ModuleType("DCNv3"))
    # ops_dcnv3 asks pkg_resources for the compiled extension's version (it is only used to pick CUDA
    # kernels we never call): answer as the official extension would.
    fake = types.ModuleType("pkg_resources")
    fake.get_distribution = lambda name: types.SimpleNamespace(version="1.1")
    sys.modules["pkg_resources"] = fake


def _load_package(name: str, folder: Path, modules) -> None:
    """Import `modules` of `folder` as sub-modules of a fresh package `name` (without its __init__,
    which lists framework modules the MTP folder does not carry)."""
    package = types.ModuleType(name)
    package.__path__ = [str(folder)]
    sys.modules[name] = package
    for module in modules:
        path = folder / f"{module}.py"
        spec = importlib.util.spec_from_file_location(f"{name}.{module}", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)


_REGISTERED: set = set()


def load_mmrotate(mmrotate_repo: Path) -> None:
    """mmrotate 1.x from a source checkout (branch 1.x; it is not on PyPI). Its package __init__ only
    asserts mmcv / mmdet versions (mmdet < 3.1); it is skipped, the sub-packages are imported as they are."""
    import mmcv
    from mmengine.utils import digit_version
    if "mmrotate" in sys.modules:
        return
    folder = Path(mmrotate_repo) / "mmrotate"
    if not (folder / "models").is_dir():
        raise SystemExit(f"{mmrotate_repo} is not an mmrotate 1.x checkout (no mmrotate/models)")
    package = types.ModuleType("mmrotate")
    package.__path__ = [str(folder)]
    package.__version__ = "1.0.0rc1"
    package.digit_version = digit_version
    package.mmcv_version = digit_version(mmcv.__version__)
    sys.modules["mmrotate"] = package
    import mmrotate.models  # registers OrientedRPNHead, coders, RotatedSingleRoIExtractor, ...
    import mmrotate.structures  # noqa: F401


def register_official(framework: str, mtp_repo: Path, opencd_repo: Path | None = None,
                      mmrotate_repo: Path | None = None) -> None:
    """Register MTP's RVSA_MTP(_branches), InternImage (and for Open-CD its UNetHead) in the framework's
    registry (once per framework and process)."""
    if framework in _REGISTERED:
        return
    _REGISTERED.add(framework)
    install_stubs()
    if framework == "opencd":
        if opencd_repo is None:
            raise SystemExit("change detection needs --opencd-repo (a checkout of likyoo/open-cd)")
        sys.path.insert(0, str(opencd_repo))
        import opencd.models  # noqa: F401 - registers SiamEncoderDecoder, FeatureFusionNeck, ...
    elif framework == "mmseg":
        import mmseg.models  # noqa: F401
    elif framework == "mmpretrain":
        import mmpretrain.models  # noqa: F401
    elif framework == "mmdet":
        import mmdet.models
    elif framework == "mmrotate":
        if mmrotate_repo is None:
            raise SystemExit("rotated detection needs --mmrotate-repo (open-mmlab/mmrotate, branch 1.x)")
        import mmdet.models  # noqa: F401
        load_mmrotate(mmrotate_repo)
    backbones, heads = FINETUNE[framework]
    _load_package(f"mtp_{framework}_backbones", mtp_repo / backbones,
                  BACKBONE_MODULES.get(framework, ["vit_rvsa_mtp", "intern_image"]))
    if heads:
        _load_package(f"mtp_{framework}_heads", mtp_repo / heads, ["unet_head"])


def reference_config(cfg):
    """The official config with the reference-only replacements (pure-PyTorch DCNv3, BN, no pretrained file)."""
    model = cfg.model
    if "data_preprocessor" not in model and "data_preprocessor" in cfg:
        # mmengine's Runner hands a top-level data_preprocessor to the model (mmpretrain configs keep it there).
        model.data_preprocessor = cfg.data_preprocessor
    model.backbone.pop("pretrained", None)
    if model.backbone.get("use_checkpoint"):
        model.backbone.use_checkpoint = False  # activation checkpointing: a training-memory option only
    if model.backbone.type == "InternImage":
        model.backbone.core_op = "DCNv3_pytorch"
    for key in ("decode_head", "auxiliary_head"):
        head = model.get(key)
        if head is not None and head.get("norm_cfg", {}).get("type") == "SyncBN":
            head.norm_cfg = dict(type="BN", requires_grad=True)
    return cfg


def build_official(cfg):
    """The official model of a (reference_config'd) config, in eval mode."""
    from mmengine.registry import init_default_scope
    scope = cfg.get("default_scope", "mmseg")
    init_default_scope(scope)
    registry = {"mmseg": "mmseg.registry", "mmpretrain": "mmpretrain.registry",
                "opencd": "opencd.registry", "mmdet": "mmdet.registry", "mmrotate": "mmrotate.registry"}[scope]
    models = importlib.import_module(registry).MODELS
    model = models.build(cfg.model)
    if getattr(model.backbone, "pretrained", None) is None and type(model.backbone).__name__ == "InternImage":
        # The official InternImage.init_weights always loads its `pretrained` file; its constructor has
        # already initialised every weight.
        model.backbone.init_weights = lambda: None
    if hasattr(model, "init_weights"):
        model.init_weights()
    return model.eval()
