"""python -m training {train,evaluate,export,finetune,import-official,dota-submission} ... (see --help of each)."""
import argparse
import json
import logging
import sys
from pathlib import Path

from training.config import repo_path


def headline(metrics: dict) -> dict:
    """The metrics worth printing (everything but matrices)."""
    return {k: v for k, v in metrics.items() if k != "confusion_matrix"}


def cmd_train(args) -> int:
    from training.tasks import checkpoint_task, config_task, task_named
    work_dir = repo_path(args.work_dir)
    if args.resume:
        if args.config:
            logging.getLogger("training").info("--resume: using the config stored in the checkpoint")
        name = checkpoint_task(work_dir / "latest.pt")
    else:
        name = config_task(args.config)
    overrides = {k: v for k, v in (("device", args.device), ("amp", args.amp), ("stop_after", args.stop_after))
                 if v is not None}
    final = task_named(name).train(args.config, work_dir, iters=args.iters, resume=args.resume, **overrides)
    if "metrics" in final:
        print(json.dumps(headline(final["metrics"]), indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from training.tasks import checkpoint_task, task_named
    checkpoint = repo_path(args.checkpoint)
    name = checkpoint_task(checkpoint)
    if name == "semantic_segmentation":
        from training.segmentation.evaluate import evaluate_checkpoint
        result = evaluate_checkpoint(checkpoint, args.image, args.label, args.dataset)
    elif args.image or args.label:
        raise ValueError(f"--image/--label apply to segmentation checkpoints; this one is {name}")
    else:
        result = task_named(name).evaluate(checkpoint)
    text = json.dumps({k: v for k, v in result.items() if k != "confusion_matrix"}, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


def cmd_export(args) -> int:
    from training.tasks import checkpoint_task, task_named
    out = repo_path(args.out)
    checkpoint = repo_path(args.checkpoint)
    if args.precision == "fp16":
        from training.export import export_fp16
        metadata = export_fp16(checkpoint, out)
    elif args.precision == "int8":
        from training.export import export_int8
        metadata = export_int8(checkpoint, out)
    else:
        metadata = task_named(checkpoint_task(checkpoint)).export(checkpoint, out)
    summary = {"model": str(out), "task": metadata["task"], "size_mb": round(out.stat().st_size / 1e6, 2),
               "metrics": {k: v for k, v in metadata["metrics"].items() if not isinstance(v, (list, dict))},
               "parity": metadata["training"]["parity"]}
    if "precision_check" in metadata:
        summary["precision"], summary["precision_check"] = metadata["precision"], metadata["precision_check"]
    print(json.dumps(summary, indent=2))
    return 0


def cmd_quantize(args) -> int:
    from training.export import int8_package
    out = repo_path(args.out)
    metadata = int8_package(repo_path(args.package), out)
    print(json.dumps({"model": str(out), "task": metadata["task"], "size_mb": round(out.stat().st_size / 1e6, 2),
                      "precision": metadata["precision"], "precision_check": metadata["precision_check"]}, indent=2))
    return 0


def cmd_import_official(args) -> int:
    from training.official.importer import import_official
    result = import_official(args.checkpoint, args.config, args.out, model_id=args.id, dataset=args.dataset,
                             overwrite=args.overwrite)
    meta = result["metadata"]
    summary = {"model": result["path"], "name": meta["name"], "task": meta["task"], "dataset": meta["dataset"],
               "encoder": meta["encoder"], "metrics": meta["metrics"], "tile_size": meta["tile_size"],
               "tile_overlap": meta["tile_overlap"], "loaded_tensors": result["report"]["loaded"],
               "dropped_tensors": sorted(result["report"]["dropped"]),
               "parity": {k: v for k, v in meta["provenance"]["parity"].items()
                          if k in ("relative_diff", "argmax_agreement", "matched", "reference", "min_iou",
                                   "max_score_diff", "passed")}}
    if "detection" in meta:
        summary["detection"] = meta["detection"]
    print(json.dumps(summary, indent=2))
    return 0


def cmd_finetune(args) -> int:
    from training.finetune.run import finetune
    result = finetune(args.spec)
    provenance = result["report"]["provenance"]
    metric = provenance["metric"]
    print(json.dumps({"model": result["package"], "metric": metric, f"finetuned_{metric}": provenance["finetuned_score"],
                      f"base_{metric}": provenance["base_score"], "baseline": provenance["baseline"],
                      f"baseline_{metric}": provenance["baseline_score"]}, indent=2))
    return 0


def cmd_dota_submission(args) -> int:
    from training.detection.dota_submission import detect_images, image_files, write_task1_submission
    results, classes = detect_images(args.checkpoint, image_files(args.images))
    paths = write_task1_submission(results, classes, args.out)
    print(json.dumps({"images": len(results), "detections": int(sum(len(r[1]) for r in results.values())),
                      "files": [str(p) for p in paths]}, indent=2))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the model a config describes (its `task:` key; evaluates on held-out data at the end)")
    p.add_argument("--config", help="YAML config (not needed with --resume)")
    p.add_argument("--work-dir", required=True, help="folder for latest.pt, train.log, metrics.json")
    p.add_argument("--iters", type=int, help="override train.iters")
    p.add_argument("--resume", action="store_true", help="continue from WORK_DIR/latest.pt")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override train.device (auto: CUDA when visible)")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], help="override train.amp (fp16 needs CUDA)")
    p.add_argument("--stop-after", type=int, help="stop with a checkpoint after this iteration (resume with --resume)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="held-out metrics of a checkpoint (segmentation: also any --image/--label pair)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--image", help="RGB image; default: the config's held-out tiles")
    p.add_argument("--label", help="label image for --image")
    p.add_argument("--dataset", default="loveda", help="label coding of --label: loveda or potsdam")
    p.add_argument("--out", help="write the full result (with confusion matrix) to this JSON file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("quantize", help="an int8 package from an fp32 package that carries its training config "
                                        "(calibrated on its training tiles, checked on its held-out data)")
    p.add_argument("package", help="the fp32 .onnx package (e.g. resources/models/mtp_seg_default.onnx)")
    p.add_argument("--out", required=True, help="path of the int8 .onnx file to write")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("export", help="write an ONNX model package (docs/contract.md) with a parity check")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="path of the .onnx file to write")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="fp16: half the size, faster on GPUs; int8: a quarter of the size, faster on CPUs (static "
                        "quantization calibrated on training tiles; segmentation, change, scenes); either is refused "
                        "when the task's held-out metric moves more than docs/contract.md allows")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import-official",
                       help="turn an official MTP finetuned checkpoint (+ its official config) into a model package")
    p.add_argument("checkpoint", help="the released .pth file (mmengine / mmseg / mmpretrain / Open-CD format)")
    p.add_argument("--config", required=True, help="the official config it was trained with "
                   "(RS_Tasks_Finetune/*/configs/mtp/**.py; read, never executed)")
    p.add_argument("--out", required=True, help="folder to write <id>.onnx into (e.g. ~/.local/share/mtp_qgis/models)")
    p.add_argument("--id", help="model id (file name); default mtp_<config name>")
    p.add_argument("--dataset", help="dataset key when the config does not tell (loveda, spacenetv1, eurosat, "
                   "resisc45, levir_cd, whu_cd, cdd, oscd_rgb, dior, dior_r, fair1m2, dota_v1, dota_v2, xview)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package of that id")
    p.set_defaults(func=cmd_import_official)

    p = sub.add_parser("finetune", help="finetune a segmentation package on labels cut from an analyst's raster "
                                        "(the backend's finetune job writes the spec; see training/finetune/run.py)")
    p.add_argument("--spec", required=True, help="finetune.json: base package, data folder, classes, iterations, out")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("dota-submission",
                       help="DOTA-v1.0/v2.0 Task 1 result files (Task1_<class>.txt) of a rotated-box checkpoint")
    p.add_argument("--checkpoint", required=True, help="a rotated_detection training checkpoint (latest.pt)")
    p.add_argument("--images", required=True, help="folder of whole DOTA test images (tiled and merged here)")
    p.add_argument("--out", required=True, help="folder for the Task1_<class>.txt files (zip them for the server)")
    p.set_defaults(func=cmd_dota_submission)

    args = parser.parse_args(argv)
    if args.command == "train" and not args.resume and not args.config:
        parser.error("train needs --config (or --resume)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError, ArithmeticError) as exc:
        # Expected user errors (bad path, bad checkpoint, failed parity) get one clear line.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        from training.mtp.distributed import cleanup   # the process group a torchrun / srun train started
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
