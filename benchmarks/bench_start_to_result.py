"""Start-to-result time of one segmentation job through each way an analyst runs it, against bare inference.

For a 1024² and a 4096² GeoTIFF (mosaics of the real sample ../shared/data/aerial_geotiff/cogeo.tif) and the
bundled mtp_seg_default, alternating the configurations round by round (each keeps its fastest run; the machine
may be shared):

- bare: `session.run` over the job's own batches, read and normalised beforehand (bench_overhead.bare_inputs),
- cli: `python -m backend run` as a process (start-up, model load, job, exit),
- qgis_process cold: scripts/qgis_run.sh with MTP_QGIS_BACKEND_LINGER_S=0 (each call starts its backend),
- qgis_process warm: the same call while the backend of the previous call lingers (the default),
- qgis_process start only: `qgis_process help mtp:segment` in the wrapper's profile (QGIS, Processing and the
  plugin start, no job): what every qgis_process call pays before the plugin can do anything,
- dock cold / warm: the plugin's algorithm run in a QGIS process that is already open (the dock's code path:
  the same algorithm object QgsProcessingAlgRunnerTask runs), its first job (starts the backend) and a later one.

overhead = seconds - bare seconds; ratio = bare / seconds (1.0: nothing beyond inference).

    .venv/bin/python benchmarks/bench_start_to_result.py --out benchmarks/results/start_to_result

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_overhead import bare_inputs, cpu_info, write_geotiff  # noqa: E402

PYTHON = str(REPO / ".venv" / "bin" / "python")
MODEL = "mtp_seg_default"

# Runs in its own process: QGIS is started first (not timed: the analyst's QGIS is already open), then each job.
DOCK_SCRIPT = r'''
import json, sys, time
from pathlib import Path
repo = Path(sys.argv[1])
sys.path[:0] = [str(repo), "/usr/share/qgis/python/plugins"]
from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback
app = QgsApplication([], False)
app.initQgis()
import mtp_qgis
plugin = mtp_qgis.classFactory(None)
plugin.initGui()
times = []
for out in sys.argv[3:]:
    alg = QgsApplication.processingRegistry().createAlgorithmById("mtp:segment")
    start = time.perf_counter()
    results, ok = alg.run({"INPUT": sys.argv[2], "OUTPUT": out}, QgsProcessingContext(), QgsProcessingFeedback())
    times.append(time.perf_counter() - start)
    if not ok:
        raise SystemExit("mtp:segment failed")
print("TIMES " + json.dumps(times))
plugin.unload()
'''


def bare_seconds(tif: Path) -> float:
    from backend.jobs import JobSpec, plan_job
    from backend.registry import ModelRegistry
    from backend.tile_pipeline import TileModel

    registry = ModelRegistry(None)
    plan = plan_job(JobSpec("semantic_segmentation", MODEL, [str(tif)], {"raster": "/tmp/unused.tif"}, None,
                            {"batch_size": 4}), registry, job_id="bare")
    tile_model = TileModel(plan.model)
    feeds = bare_inputs("seg", plan, tile_model)
    tile_model.session.run(None, feeds[0])  # warm-up
    start = time.perf_counter()
    for f in feeds:
        tile_model.session.run(None, f)
    return time.perf_counter() - start


def paths(tif: Path, work: Path, run: list[str], env: dict, cold_env: dict) -> dict:
    """name -> a function that runs the job that way once and returns its seconds."""
    return {
        "bare": lambda: bare_seconds(tif),
        "cli": lambda: timed([PYTHON, "-m", "backend", "run", "--model", MODEL, "--input", str(tif),
                              "--out", str(work / "cli.tif"), "--overwrite"], env),
        "qgis_process cold": lambda: timed(run + [f"OUTPUT={work / 'qp_cold.tif'}"], cold_env),
        "qgis_process warm": lambda: timed(run + [f"OUTPUT={work / 'qp_warm.tif'}"], env),
        "qgis_process start only": lambda: timed([qgis_process(), "help", "mtp:segment"], qgis_env(env)),
    }


def qgis_process() -> str:
    """qgis_process.bin where Debian has it (its /usr/bin/qgis_process wrapper passes a flag 3.22 rejects)."""
    import shutil

    return shutil.which("qgis_process.bin") or shutil.which("qgis_process") or "qgis_process"


def qgis_env(env: dict) -> dict:
    """The environment scripts/qgis_run.sh gives qgis_process (its profile, with the plugin enabled)."""
    home = REPO / "build" / "demo-home"
    return dict(env, HOME=str(home), QGIS_PLUGINPATH=str(home / "plugins"), QT_QPA_PLATFORM="offscreen",
                XDG_RUNTIME_DIR=env.get("XDG_RUNTIME_DIR", str(home / "run")))


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stdout[-1500:]}{done.stderr[-1500:]}")
    return seconds


def stop_lingering(state_file: Path) -> None:
    try:
        pid = json.loads(state_file.read_text())["pid"]
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, KeyError):
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write OUT.md and OUT.csv")
    parser.add_argument("--cache", type=Path, default=REPO / "benchmarks" / "results" / "tmp")
    args = parser.parse_args()

    args.cache.mkdir(parents=True, exist_ok=True)
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mtp_start_") as tmp:
        work = Path(tmp)
        for size in args.sizes:
            tif = write_geotiff(args.cache / f"mosaic_{size}.tif", size)
            state = work / f"state_{size}.json"
            env = dict(os.environ, MTP_QGIS_STATE_FILE=str(state), MTP_QGIS_CALIBRATE="0")
            cold_env = dict(env, MTP_QGIS_BACKEND_LINGER_S="0")
            run = [*("bash", str(REPO / "scripts/qgis_run.sh"), "mtp:segment", f"INPUT={tif}")]
            configs = paths(tif, work, run, env, cold_env)
            best: dict[str, float] = {}
            timed(run + [f"OUTPUT={work / 'qp_first.tif'}"], env)  # the warm configuration's backend, started
            for r in range(args.repeats):
                names = list(configs)
                for name in names[r % len(names):] + names[:r % len(names)]:
                    if name == "qgis_process cold":
                        stop_lingering(state)
                    seconds = configs[name]()
                    if name == "qgis_process cold":
                        timed(run + [f"OUTPUT={work / 'qp_rewarm.tif'}"], env)  # warm again for the next round
                    best[name] = min(best.get(name, float("inf")), seconds)
                    print(f"{size}² {name}: {seconds:.2f} s", flush=True)
                # The dock's path: one QGIS process, its first job cold (no backend yet), the next ones warm.
                stop_lingering(state)
                time.sleep(1.0)
                outs = [str(work / f"dock_{r}_{i}.tif") for i in range(3)]
                done = subprocess.run([PYTHON, "-c", DOCK_SCRIPT, str(REPO), str(tif), *outs],
                                      env=dict(env, QT_QPA_PLATFORM="offscreen"), capture_output=True, text=True,
                                      timeout=3600)
                line = next((x for x in done.stdout.splitlines() if x.startswith("TIMES ")), None)
                if line is None:
                    raise SystemExit(f"dock path failed: {done.stdout[-1500:]}{done.stderr[-1500:]}")
                times = json.loads(line[6:])
                best["dock cold"] = min(best.get("dock cold", float("inf")), times[0])
                best["dock warm"] = min(best.get("dock warm", float("inf")), min(times[1:]))
                print(f"{size}² dock: cold {times[0]:.2f} s, warm {', '.join(f'{t:.2f}' for t in times[1:])} s",
                      flush=True)
            stop_lingering(state)
            bare = best["bare"]
            for name in ["bare", "cli", "qgis_process cold", "qgis_process warm", "qgis_process start only",
                         "dock cold", "dock warm"]:
                rows.append({"size": size, "path": name, "seconds": round(best[name], 2),
                             "overhead_s": round(best[name] - bare, 2), "ratio": round(bare / best[name], 3)})
    load = (load_before, os.getloadavg()[0])
    for row in rows:
        print(f"{row['size']}² {row['path']:<18} {row['seconds']:>7.2f} s  overhead {row['overhead_s']:>6.2f} s  "
              f"ratio {row['ratio']:.2f}")
    if args.out:
        write_table(args.out, rows, args.repeats, load)
    return 0


def write_table(out: Path, rows: list[dict], repeats: int, load: tuple[float, float]) -> None:
    cpu = cpu_info()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# Start to result: one segmentation job through each path, against bare inference", "",
             f"Machine: {cpu['model']}, {cpu['cores']} cores, {cpu['ram_gib']:.1f} GiB RAM. Model {MODEL}, batch 4, "
             f"GeoTIFF mosaics of the real sample. Fastest of {repeats} alternated runs per path "
             f"(`benchmarks/bench_start_to_result.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); load "
             f"average {load[0]:.1f} before and {load[1]:.1f} after on {cpu['cores']} cores (a shared machine: "
             "other programs took their share).", "",
             "| raster | path | seconds | overhead s | ratio (bare / path) |", "|---|---|---|---|---|"]
    for r in rows:
        if r["path"] == "qgis_process start only":  # not a path to a result: its seconds are all overhead
            lines.append(f"| {r['size']}² | {r['path']} | {r['seconds']} | | |")
        else:
            lines.append(f"| {r['size']}² | {r['path']} | {r['seconds']} | {r['overhead_s']} | {r['ratio']} |")
    by = {(r["size"], r["path"]): r["seconds"] for r in rows}
    verdicts = []
    for size in sorted({r["size"] for r in rows}):
        bare, warm, start = by[(size, "bare")], by[(size, "qgis_process warm")], by[(size, "qgis_process start only")]
        verdicts.append(f"at {size}² warm qgis_process is {bare / warm:.2f} of bare; without QGIS's own start "
                        f"({start:.2f} s) it would be {bare / max(warm - start, bare):.2f}, and QGIS's start alone "
                        f"takes {start / bare:.0%} of bare")
    lines += ["",
              "- bare: `session.run` over the job's batches, already read and normalised; the paths below pay "
              "reading, blending, writing and their own start.",
              "- cli: `python -m backend run` (a new process: imports, model session, job).",
              "- qgis_process cold: `scripts/qgis_run.sh` with the backend stopping after each call "
              "(`MTP_QGIS_BACKEND_LINGER_S=0`): QGIS starts, loads the plugin, starts the backend, runs the job.",
              "- qgis_process warm: the default; the backend of the previous call lingers idle "
              "(`backend_linger_s`, 120 s) and the call reuses it with its model session. One QGIS start per call "
              "(the wrapper reads the profile instead of asking QGIS whether the plugin is enabled).",
              "- dock cold / warm: the plugin's `mtp:segment` run inside an open QGIS (the algorithm the dock's "
              "QgsProcessingAlgRunnerTask runs): the first job starts the backend, later ones find it.",
              "- qgis_process start only: `qgis_process help mtp:segment` in the wrapper's profile: QGIS starts, loads "
              "Processing, its providers and the plugin, and exits without a job: the part of every qgis_process "
              "call that the plugin cannot shorten (of it, the plugin's imports and provider are a small part: "
              "`PYTHONPROFILEIMPORTTIME=1` shows them). Target: warm qgis_process >= "
              "0.8 of bare at 4096²; " + "; ".join(verdicts) + ".", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.csv')}")


if __name__ == "__main__":
    sys.exit(main())
