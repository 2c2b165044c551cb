"""Make the official MTP finetune code importable in the reference environment (.venv-ref) on a machine
without compiled mmcv / DCNv3 ops, and build official models from official configs.

What is replaced, and only here (never in backend/, mtp_qgis/ or training/):
* `mmcv.ops` (compiled ops) by an empty stand-in module: mmseg / mmdet import names from it at import
  time; the MTP segmentation, classification and change models never call them.
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
}


class _AnyAttr(types.ModuleType):
    """A module whose every attribute is a placeholder class (for `from mmcv.ops import X`)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *a, **k: None})


def install_stubs() -> None:
    import mmcv  # noqa: F401 - the real, pure-Python package
    ops = _AnyAttr("mmcv.ops")
    ops.__path__ = []
    sys.modules["mmcv.ops"] = ops
    sys.modules["mmcv"].ops = ops
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


def register_official(framework: str, mtp_repo: Path, opencd_repo: Path | None = None) -> None:
    """Register MTP's RVSA_MTP, InternImage (and for Open-CD its UNetHead) in the framework's registry
    (once per framework and process)."""
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
    backbones, heads = FINETUNE[framework]
    _load_package(f"mtp_{framework}_backbones", mtp_repo / backbones, ["vit_rvsa_mtp", "intern_image"])
    if heads:
        _load_package(f"mtp_{framework}_heads", mtp_repo / heads, ["unet_head"])


def reference_config(cfg):
    """The official config with the reference-only replacements (pure-PyTorch DCNv3, BN, no pretrained file)."""
    model = cfg.model
    if "data_preprocessor" not in model and "data_preprocessor" in cfg:
        # mmengine's Runner hands a top-level data_preprocessor to the model (mmpretrain configs keep it there).
        model.data_preprocessor = cfg.data_preprocessor
    model.backbone.pop("pretrained", None)
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
                "opencd": "opencd.registry"}[scope]
    models = importlib.import_module(registry).MODELS
    model = models.build(cfg.model)
    if getattr(model.backbone, "pretrained", None) is None and type(model.backbone).__name__ == "InternImage":
        # The official InternImage.init_weights always loads its `pretrained` file; its constructor has
        # already initialised every weight.
        model.backbone.init_weights = lambda: None
    if hasattr(model, "init_weights"):
        model.init_weights()
    return model.eval()
