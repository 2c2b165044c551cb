"""Command line: serve, run, models, import-model, doctor."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

from backend import __version__
from backend.errors import BackendError, JobCancelled


def _extent(text: str):
    from backend.raster_io import Extent

    try:
        xmin, ymin, xmax, ymax = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--extent must be xmin,ymin,xmax,ymax numbers, got '{text}'") from None
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
        raise argparse.ArgumentTypeError(f"--extent must be finite numbers, got '{text}'")
    return Extent(xmin, ymin, xmax, ymax)


def _absolute(text: str) -> str:
    """An absolute path without asking the file system (a NUL byte or an overlong name is refused later,
    by the job's own checks, with a clear message)."""
    return text if os.path.isabs(text) else os.path.join(os.getcwd(), text)


def build_parser() -> argparse.ArgumentParser:
    from backend.server import DEFAULT_STATE_FILE, DEFAULT_TOKEN_FILE
    from backend.tasks import BATCH_TASKS, CLI_TASKS

    parser = argparse.ArgumentParser(prog="python -m backend", description="mtp_qgis inference backend")
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def models_dir_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--models-dir", nargs="+", type=Path, default=None,
                       help="the only folders holding .onnx packages (default: repo resources/models, "
                            "~/.local/share/mtp_qgis/models, $MTP_QGIS_MODELS)")
        p.add_argument("--extra-models-dir", nargs="+", type=Path, default=[],
                       help="folders searched before the default ones (or before --models-dir)")

    s = sub.add_parser("serve", help="serve the HTTP API on loopback")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0, help="0 = any free port (see the state file)")
    s.add_argument("--state-file", type=Path, default=DEFAULT_STATE_FILE)
    s.add_argument("--token-file", type=Path, default=DEFAULT_TOKEN_FILE)
    s.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    s.add_argument("--linger", type=float, default=0.0, metavar="SECONDS",
                   help="with --parent-pid: once the parent is gone, keep serving until no request came and no job "
                        "ran for SECONDS (the next qgis_process call then reuses this backend); 0 = exit at once")
    s.add_argument("--config-key", default=None, help="an opaque text written into the state file (the plugin "
                                                     "reuses a backend only when it started it with the same key)")
    s.add_argument("--cluster", default=None, metavar="local[:N]|tcp://HOST:PORT",
                   help="the Dask cluster of jobs sent with options.cluster true")
    models_dir_arg(s)

    r = sub.add_parser("run", help="run one job in this process (no HTTP)",
                       description="semantic_segmentation: --input IN.tif --out classes.tif; "
                                   "change_detection: --input BEFORE --input AFTER --out changes.tif "
                                   "[--polygons changes.gpkg] [--min-area-px N] [--simplify-px T]; "
                                   "scene_classification: --input IN.tif --out scenes.gpkg [--cell-size N]; "
                                   "detection, rotated_detection, instance_segmentation: --input IN.tif --out detections.gpkg "
                                   "[--score-threshold S]; land_cover_extraction: --input IN.tif --out land_cover.gpkg "
                                   "--instruction 'extract water bodies' [--sensor S]; spectral_indices (no --model): "
                                   "--input IN.tif --out indices.tif [--indices ndvi ndwi] [--sensor S]")
    r.add_argument("--task", default="semantic_segmentation",  # finetune is a job of the HTTP API (mtp:finetune)
                   choices=list(CLI_TASKS))
    r.add_argument("--model", default="", help="model id (not for spectral_indices)")
    r.add_argument("--input", required=True, type=str, action="append",
                   help="input raster; give it twice (before, then after) for change_detection")
    r.add_argument("--output", "--out", dest="output", required=True, type=str,
                   help="the result: class GeoTIFF, change GeoTIFF, scene grid .gpkg or detections .gpkg")
    r.add_argument("--polygons", type=str, default=None, help="change_detection: also write change polygons (.gpkg)")
    r.add_argument("--min-area-px", type=int, default=None, help="change_detection: drop smaller polygons")
    r.add_argument("--simplify-px", type=float, default=None,
                   help="change_detection: simplify polygon outlines with this tolerance in pixels")
    r.add_argument("--cell-size", type=int, default=None,
                   help="scene_classification: cell side in source pixels (default: the model's tile size)")
    r.add_argument("--score-threshold", type=float, default=None,
                   help="detection, instance_segmentation: keep objects scoring at least this, 0-1 (default: the model's)")
    r.add_argument("--instruction", default=None,
                   help="land_cover_extraction: what to extract, e.g. 'water bodies larger than half a hectare'")
    r.add_argument("--indices", nargs="+", default=None, help="spectral_indices: ndvi ndwi mndwi ndbi bsi "
                                                              "(default: all the raster's bands allow)")
    r.add_argument("--sensor", default=None, help="sensor of the raster for models that read bands by role and for "
                                                  "spectral indices: auto (default), sentinel2_l1c, sentinel2_l2a, "
                                                  "landsat8_9, naip, planetscope_4, planetscope_8")
    r.add_argument("--extent", type=_extent, default=None, help="xmin,ymin,xmax,ymax")
    r.add_argument("--extent-crs", default="", help="CRS of --extent (default: the raster's)")
    r.add_argument("--batch-size", type=int, default=None,
                   help="tiles per batch (default: 4 on the CPU, what fits the free memory on a GPU)")
    r.add_argument("--overwrite", action="store_true", help="replace output files that exist (regular files only)")
    r.add_argument("--cluster", default=None, metavar="local[:N]|tcp://HOST:PORT",
                   help="run on a Dask cluster: local[:N] starts N worker processes here, an address uses a running "
                        "scheduler whose workers see the same paths (same result as without; needs dask[distributed])")
    r.add_argument("--block-size", type=int, default=None,
                   help="--cluster: pixels a side of the blocks one worker task computes (default 4096)")
    models_dir_arg(r)

    b = sub.add_parser("batch", help="one model over many rasters, with a results index (resumable)",
                       description="Runs --task with --model over every raster of the inputs (folders, .txt lists "
                                   "of paths, VRTs for their source files, raster files) into --out-dir, one output "
                                   "per raster named after it, and writes the index GeoPackage. A rerun skips the "
                                   "rasters whose output exists.")
    b.add_argument("--task", default="semantic_segmentation",
                   choices=list(BATCH_TASKS))
    b.add_argument("--model", required=True)
    b.add_argument("--input", required=True, action="append", help="folder, list .txt, VRT or raster; repeatable")
    b.add_argument("--out-dir", required=True, type=Path)
    b.add_argument("--index", type=Path, default=None, help="index GeoPackage (default: OUT_DIR/index.gpkg)")
    b.add_argument("--cluster", default=None, metavar="local[:N]|tcp://HOST:PORT",
                   help="one Dask task per raster on this cluster (default: one after the other here)")
    b.add_argument("--cell-size", type=int, default=None, help="scene_classification: cell side in pixels")
    b.add_argument("--score-threshold", type=float, default=None, help="detection: minimum score, 0-1")
    b.add_argument("--batch-size", type=int, default=4)
    b.add_argument("--overwrite", action="store_true", help="recompute rasters whose output exists")
    models_dir_arg(b)

    m = sub.add_parser("models", help="list the models found")
    m.add_argument("--json", action="store_true")
    models_dir_arg(m)

    i = sub.add_parser("import-model", help="third-party ONNX + YAML metadata -> model package")
    i.add_argument("onnx", type=Path)
    i.add_argument("metadata", type=Path, help="YAML with the fields of docs/contract.md §1")
    i.add_argument("--out", required=True, type=Path)
    i.add_argument("--id", default=None, help="model id (file stem); default: the ONNX file's stem")

    d = sub.add_parser("doctor", help="ONNX Runtime build and providers, GPUs, CUDA/cuDNN/TensorRT libraries, and "
                                      "a short timing of a bundled model on each provider")
    d.add_argument("--seconds", type=float, default=3.0, help="timing per provider (0: no timing)")
    d.add_argument("--model", type=Path, default=None, help="the .onnx to time (default: the bundled segmentation model)")
    d.add_argument("--json", action="store_true")

    f = sub.add_parser("finetune", help="train a new segmentation, scene, change or detection package on labelled polygons "
                                        "(mtp:finetune's job)",
                       description="Cuts the labelled area from the raster at the base model's GSD, trains the base "
                                   "package on the polygons (segmentation and scenes: areas, unlabelled pixels ignored; "
                                   "detection: one polygon per object, every object drawn), scores the result "
                                   "against the base model and a baseline on held-out labels, and writes the new "
                                   "package into a models folder. Needs the training environment (PyTorch).")
    f.add_argument("--model", required=True, help="the base package (a semantic_segmentation, scene_classification, "
                                                  "change_detection, detection or rotated_detection model)")
    f.add_argument("--input", required=True, type=Path, help="the raster (change detection: the before raster)")
    f.add_argument("--after", type=Path, default=None, help="change detection: the after raster")
    f.add_argument("--labels", required=True, type=Path, help="a vector file of polygons")
    f.add_argument("--class-field", required=True, help="the labels' field holding each polygon's class")
    f.add_argument("--model-id", required=True, help="the new package's id")
    f.add_argument("--into", type=Path, default=None,
                   help="the models folder to write it into (default: the user models folder, "
                        "~/.local/share/mtp_qgis/models, which the backend and the plugin always list)")
    f.add_argument("--validation", type=Path, default=None, help="polygons whose labels are held out")
    f.add_argument("--iterations", type=int, default=300)
    f.add_argument("--time-budget", type=int, default=None, metavar="SECONDS")
    f.add_argument("--batch-size", type=int, default=None,
                   help="crops per iteration (default: 8 for segmentation, the base recipe's for detection)")
    f.add_argument("--report", type=Path, default=None, help="an HTML report to write")
    models_dir_arg(f)

    c = sub.add_parser("calibrate", help="measure which CPU session options run each model fastest on this machine",
                       description="Times ONNX Runtime's candidate CPU options (spinning, work split, threads) on "
                                   "each model, alternating them, and keeps the fastest for the backend's sessions "
                                   "(a small file per model in ~/.cache/mtp_qgis/calibration). The backend also "
                                   "does this by itself when idle, for the models it has used.")
    c.add_argument("--model", nargs="+", default=None, help="model ids (default: every model found)")
    c.add_argument("--seconds", type=float, default=20.0, help="measuring time per model (at least 2 rounds)")
    c.add_argument("--batch-size", type=int, default=4)
    models_dir_arg(c)
    return parser


def print_progress(percent: float, message: str) -> None:
    print(f"\r{percent:5.1f}% {message}", end="", file=sys.stderr, flush=True)


def model_registry(args):
    from backend.registry import ModelRegistry, default_model_dirs

    return ModelRegistry(list(args.extra_models_dir) + list(args.models_dir or default_model_dirs()))


def cmd_run(args) -> int:
    import dataclasses

    import time

    from backend.jobs import JobSpec, failure_message, plan_job, run_plan, run_report
    from backend.server import DEFAULT_STATE_FILE, DEFAULT_TOKEN_FILE
    from backend.tasks import TASKS

    for flag, value, task in (("--polygons", args.polygons, "change_detection"),
                              ("--min-area-px", args.min_area_px, "change_detection"),
                              ("--simplify-px", args.simplify_px, "change_detection"),
                              ("--cell-size", args.cell_size, "scene_classification"),
                              ("--instruction", args.instruction, "land_cover_extraction"),
                              ("--indices", args.indices, "spectral_indices")):
        if value is not None and args.task != task:
            raise BackendError(f"{flag} applies to --task {task} only, not {args.task}.")
    needs_model = TASKS[args.task].needs_model
    if not needs_model and args.model:
        raise BackendError(f"--task {args.task} runs no model; leave out --model.")
    if needs_model and not args.model:
        raise BackendError(f"--task {args.task} needs --model (python -m backend models lists them).")
    if args.score_threshold is not None and "score_threshold" not in TASKS[args.task].options:
        takers = [name for name, spec in TASKS.items() if "score_threshold" in spec.options]
        raise BackendError(f"--score-threshold applies to --task {', '.join(takers[:-1])} or {takers[-1]} only, "
                           f"not {args.task}.")
    extent = dataclasses.replace(args.extent, crs=args.extent_crs) if args.extent else None
    outputs = {TASKS[args.task].required_outputs[0]: _absolute(args.output)}
    # batch size: the backend chooses (free GPU memory / CPU default) unless given; index maps have none
    options = {} if not needs_model or args.batch_size is None else {"batch_size": args.batch_size}
    for name in ("instruction", "indices", "sensor"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.polygons is not None:
        outputs["polygons"] = _absolute(args.polygons)
    if args.min_area_px is not None:
        options["min_area_px"] = args.min_area_px
    if args.simplify_px is not None:
        options["simplify_px"] = args.simplify_px
    if args.cell_size is not None:
        options["cell_size"] = args.cell_size
    if args.score_threshold is not None:
        options["score_threshold"] = args.score_threshold
    spec = JobSpec(args.task, args.model, [_absolute(p) for p in args.input], outputs, extent, options,
                   args.overwrite)
    plan = plan_job(spec, model_registry(args), job_id="cli",
                    protected={DEFAULT_TOKEN_FILE: "the backend's token file", DEFAULT_STATE_FILE: "the backend's state file"})

    progress = print_progress

    if args.block_size is not None and args.cluster is None:
        raise BackendError("--block-size applies to --cluster runs only.")
    if args.cluster is not None:
        from backend.cluster import refuse_unless_cluster_task

        refuse_unless_cluster_task(args.task)  # before a cluster is started or reached
    started = time.time()
    try:
        if args.cluster is not None:
            from backend.cluster import DEFAULT_BLOCK_SIZE, run_plan_on_cluster

            reports: list[dict] = []
            written = run_plan_on_cluster(args.task, plan, args.cluster, args.block_size or DEFAULT_BLOCK_SIZE,
                                          progress, on_dashboard=lambda link: print(f"dashboard: {link}",
                                                                                    file=sys.stderr),
                                          on_report=reports.append)
            report = reports[0] if reports else None
        else:
            written = run_plan(args.task, plan, progress)
            report = run_report(plan, time.time() - started)
        if report:
            print(f"\nran on {report['device']} ({report['provider']}, batch {report['batch_size']}): "
                  f"{report['megapixels_per_s']} Mpx/s", end="", file=sys.stderr)
    except (BackendError, JobCancelled, KeyboardInterrupt):
        raise
    except Exception as exc:  # an I/O failure (full disk) or a bug: a message, not a traceback
        raise BackendError(failure_message(exc, plan)) from exc
    finally:
        print(file=sys.stderr)  # end the progress line
    for path in written.values():
        print(path)
    return 0


def cmd_batch(args) -> int:
    from backend.batch import run_batch

    options = {"batch_size": args.batch_size}
    if args.cell_size is not None:
        options["cell_size"] = args.cell_size
    if args.score_threshold is not None:
        options["score_threshold"] = args.score_threshold
    index = args.index or args.out_dir / "index.gpkg"

    progress = print_progress

    def run(client=None):
        return run_batch(args.task, args.model, args.input, args.out_dir, index, model_registry(args), options,
                         args.overwrite, client, progress)

    try:
        if args.cluster is None:
            result = run()
        else:
            from backend.cluster import connect, dashboard_link

            with connect(args.cluster) as (client, _threads):
                link = dashboard_link(client)
                if link:
                    print(f"dashboard: {link}", file=sys.stderr)
                result = run(client)
    finally:
        print(file=sys.stderr)
    reused = sum(r.reused for r in result.rasters)
    print(f"{result.count('succeeded')} succeeded ({reused} from an earlier run), {result.count('failed')} failed; "
          f"index: {result.index}")
    for r in result.rasters:
        if r.status == "failed":
            print(f"failed: {r.input}: {r.error}", file=sys.stderr)
    return 1 if result.count("failed") else 0


def cmd_models(args) -> int:
    registry = model_registry(args)
    packages = registry.list()
    if args.json:
        print(json.dumps({"models": [p.info() for p in packages]}, indent=2))
        return 0
    if not packages:
        print("no models found in: " + ", ".join(str(d) for d in registry.model_dirs))
    for p in packages:
        about = " · ".join(x for x in (p.raw.get("dataset"), p.raw.get("encoder"), p.headline_metric) if x)
        print(f"{p.id}\t{p.task}\t{p.name}" + (f" [{about}]" if about else "") +
              f"\t{p.num_classes} classes\ttile {p.tile_size}/{p.tile_overlap}\t{p.path}")
    return 0


MAX_METADATA_FILE_BYTES = 1024 * 1024


def read_metadata_yaml(path: Path):
    """The YAML of `import-model`, bounded: at most 1 MiB and no aliases (`*name`), which could expand a
    small file into gigabytes; metadata never needs them."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} is not allowed here",
                                                  event.start_mark)
            return super().compose_node(parent, index)

    try:
        if path.stat().st_size > MAX_METADATA_FILE_BYTES:
            raise BackendError(f"Metadata file {path} is over {MAX_METADATA_FILE_BYTES} bytes; model metadata is a "
                               "few kilobytes.")
        return yaml.load(path.read_text(encoding="utf-8"), Loader=NoAliasLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BackendError(f"Metadata file {path} could not be read as YAML: {exc}") from exc


def cmd_import(args) -> int:
    from backend.model_package import import_model

    metadata = read_metadata_yaml(args.metadata)
    package = import_model(args.onnx, metadata, args.out, args.id)
    print(package.path)
    return 0


def cmd_finetune(args) -> int:
    import uuid

    from backend.jobs import JobSpec, plan_job, run_plan
    from backend.registry import default_model_dirs

    registry = model_registry(args)
    if args.into is None:
        folder = default_model_dirs()[1]  # the user models folder: every backend and the plugin list it
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = args.into
    if folder.resolve() not in {d.resolve() for d in registry.model_dirs if d.is_dir()}:
        registry.model_dirs.insert(0, folder)  # the job writes only into folders it searches
    options = {"class_field": args.class_field, "model_id": args.model_id, "models_dir": _absolute(str(folder)),
               "iterations": args.iterations}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    if args.time_budget is not None:
        options["time_budget_s"] = args.time_budget
    if args.validation is not None:
        options["validation"] = _absolute(str(args.validation))
    rasters = [_absolute(str(args.input))] + ([_absolute(str(args.after))] if args.after is not None else [])
    spec = JobSpec("finetune", args.model, [*rasters, _absolute(str(args.labels))],
                   {"report": _absolute(str(args.report))} if args.report else {}, None, options)
    plan = plan_job(spec, registry, job_id=uuid.uuid4().hex[:12])
    try:
        written = run_plan("finetune", plan, print_progress)
    finally:
        print(file=sys.stderr)
    for path in written.values():
        print(path)
    return 0


def cmd_calibrate(args) -> int:
    from backend.calibration import calibrate
    from backend.sessions import GPU_PROVIDERS, available_providers

    if available_providers()[0] in GPU_PROVIDERS:
        raise BackendError("Calibration chooses CPU options; this backend runs models on the GPU "
                           "(MTP_QGIS_DEVICE=cpu calibrates the CPU fallback).")
    if args.seconds <= 0 or args.batch_size < 1:
        raise BackendError("--seconds must be > 0 and --batch-size >= 1.")
    registry = model_registry(args)
    models = [registry.get(m) for m in args.model] if args.model else registry.list()
    for model in models:
        print(f"{model.id}: ", end="", flush=True)
        record = calibrate(model.path, model.tile_size, args.batch_size, args.seconds)
        fastest = min(m["batch_s"] for m in record["measured"])
        print(f"{record['rounds']} rounds, batch {args.batch_size}")
        for m in record["measured"]:
            chosen = " <- chosen" if m["options"] == record["chosen"] else ""
            print(f"  {m['describe']:<50} {m['batch_s']:.4f} s/batch  ({fastest / m['batch_s']:.2f} of the "
                  f"fastest){chosen}")
    return 0


def cmd_doctor(args) -> int:
    from backend.doctor import format_report, report

    if args.model is not None and not args.model.is_file():
        raise BackendError(f"--model {args.model} is not a file; give a .onnx model package.")
    result = report(args.seconds, args.model)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.command == "serve":
            from backend.server import serve

            if args.cluster is not None:
                from backend.cluster import parse_address

                parse_address(args.cluster)
            if args.linger < 0 or (args.linger and not args.parent_pid):
                raise BackendError("--linger needs --parent-pid and a number of seconds >= 0.")
            return serve(args.host, args.port, args.state_file, args.token_file, model_registry(args), args.parent_pid,
                         args.cluster, linger_s=args.linger, config_key=args.config_key)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "models":
            return cmd_models(args)
        if args.command == "batch":
            return cmd_batch(args)
        if args.command == "import-model":
            return cmd_import(args)
        if args.command == "doctor":
            return cmd_doctor(args)
        if args.command == "finetune":
            return cmd_finetune(args)
        if args.command == "calibrate":
            return cmd_calibrate(args)
    except BackendError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, JobCancelled):
        print("cancelled", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so in one line; -v shows where
        if args.verbose:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (run with -v for details, and please report it)",
              file=sys.stderr)
        return 1
    return 1
