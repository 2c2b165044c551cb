"""python -m training {train,evaluate,export} ... (see --help of each)."""
import argparse
import json
import logging
import sys
from pathlib import Path

from training.config import repo_path


def cmd_train(args) -> int:
    from training.config import load_config
    from training.engine import train
    cfg = None if args.resume else load_config(args.config)
    if args.resume and args.config:
        logging.getLogger("training").info("--resume: using the config stored in the checkpoint")
    final = train(cfg, repo_path(args.work_dir), iters=args.iters, resume=args.resume)
    if "metrics" in final:
        print(json.dumps({k: final["metrics"][k] for k in ("mIoU", "per_class_iou", "overall_accuracy",
                                                             "baseline_best_constant")}, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from training.evaluate import evaluate_checkpoint
    result = evaluate_checkpoint(repo_path(args.checkpoint), args.image, args.label, args.dataset)
    text = json.dumps({k: v for k, v in result.items() if k != "confusion_matrix"}, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


def cmd_export(args) -> int:
    from training.export import export_checkpoint
    out = repo_path(args.out)
    metadata = export_checkpoint(repo_path(args.checkpoint), out)
    summary = {"model": str(out), "size_mb": round(out.stat().st_size / 1e6, 2),
               "mIoU": metadata["metrics"]["mIoU"], "parity": metadata["training"]["parity"]}
    print(json.dumps(summary, indent=2))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a segmentation model (evaluates on the held-out tiles at the end)")
    p.add_argument("--config", help="YAML config (not needed with --resume)")
    p.add_argument("--work-dir", required=True, help="folder for latest.pt, train.log, metrics.json")
    p.add_argument("--iters", type=int, help="override train.iters")
    p.add_argument("--resume", action="store_true", help="continue from WORK_DIR/latest.pt")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="sliding-window mIoU of a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--image", help="RGB image; default: the config's held-out tiles")
    p.add_argument("--label", help="label image for --image")
    p.add_argument("--dataset", default="loveda", help="label coding of --label: loveda or potsdam")
    p.add_argument("--out", help="write the full result (with confusion matrix) to this JSON file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write an ONNX model package (docs/contract.md) with a parity check")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="path of the .onnx file to write")
    p.set_defaults(func=cmd_export)

    args = parser.parse_args(argv)
    if args.command == "train" and not args.resume and not args.config:
        parser.error("train needs --config (or --resume)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError, ArithmeticError) as exc:
        # Expected user errors (bad path, bad checkpoint, failed parity) get one clear line.
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
