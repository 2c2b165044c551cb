"""The command line with the same bad values as the API (a message, never a traceback), `serve` on a port in
use, the token file's mode, the bounds on model metadata and YAML, and the expiry of job records."""

import json
import os
import socket
import subprocess
import sys
import time

import onnx
import pytest

from backend import cli
from backend.errors import TooManyJobsError
from backend.jobs import JobManager, JobSpec
from backend.model_package import MAX_DESCRIPTION_CHARS, write_metadata
from backend.registry import ModelRegistry
from backend.synthetic_models import build_model, default_metadata
from backend_test_data import REPO, start_server, stop


pytestmark = pytest.mark.slow  # the whole file (README.md, Development): not in `make test-fast`


def run_cli(capsys, *argv):
    """backend.cli.main as `python -m backend` calls it: (exit code, stderr)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("args,fragment", [
    (["--extent", "nan,0,1,1"], "--extent must be finite numbers"),
    (["--extent=-inf,0,inf,1"], "--extent must be finite numbers"),
    (["--output", "OUT/" + "n" * 300 + ".tif"], "file names may have at most 255 bytes"),
    (["--output", "OUT/.bashrc"], "must be a .tif or .tiff file"),
    (["--task", "scene_classification", "--model", "scene", "--output", "OUT/s.gpkg", "--cell-size", "1" + "0" * 400],
     "options.cell_size must be"),
    (["--task", "detection", "--model", "det", "--output", "OUT/d.gpkg", "--score-threshold", "1e400"],
     "options.score_threshold must be"),
    (["--input", "CORPUS:truncated GeoTIFF"], "is truncated or corrupt"),
    (["--input", "CORPUS:uint16 (8-bit x 257)"], "has values from 0 to"),
    (["--input", "CORPUS:VRT with a /vsicurl/ source"], "over the network"),
    (["--extent", "0,0,1,1", "--extent-crs", "http://127.0.0.1:9/crs"], "is a URL"),
])
def test_cli_says_what_is_wrong_without_a_traceback(capsys, fuzz_models_dir, corpus, tmp_path, args, fragment):
    args = [corpus[a[7:]].path if str(a).startswith("CORPUS:") else str(a).replace("OUT", str(tmp_path)) for a in args]
    defaults = {"--model": "seg", "--input": corpus["clean"].path, "--output": tmp_path / "r.tif"}
    for flag, value in defaults.items():
        if flag not in args:
            args = [flag, value, *args]
    code, err = run_cli(capsys, "run", "--models-dir", fuzz_models_dir, *args)
    assert code == 2 and fragment in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_cli_overwrites_only_when_asked(capsys, fuzz_models_dir, corpus, tmp_path):
    out = tmp_path / "r.tif"
    out.write_bytes(b"older")
    common = ["run", "--models-dir", fuzz_models_dir, "--model", "seg", "--input", corpus["clean"].path, "--out", out]
    code, err = run_cli(capsys, *common)
    assert code == 2 and "already exists" in err and "--overwrite" in err and out.read_bytes() == b"older"
    code, err = run_cli(capsys, *common, "--overwrite")
    assert code == 0 and out.read_bytes()[:2] in (b"II", b"MM")


def test_import_model_refuses_yaml_aliases_and_huge_files(capsys, tmp_path):
    onnx_path = tmp_path / "m.onnx"
    onnx.save(build_model(), str(onnx_path))
    bomb = tmp_path / "bomb.yaml"
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join(f'*a{i - 1}' for _ in range(9))}]" for i in range(1, 12)]
    bomb.write_text("\n".join(lines) + "\n")  # 9^12 strings once expanded: hundreds of gigabytes
    code, err = run_cli(capsys, "import-model", onnx_path, bomb, "--out", tmp_path)
    assert code == 2 and "alias *a0 is not allowed" in err
    huge = tmp_path / "huge.yaml"
    huge.write_text("description: " + "x" * (2 * 1024 * 1024) + "\n")
    code, err = run_cli(capsys, "import-model", onnx_path, huge, "--out", tmp_path)
    assert code == 2 and "is over 1048576 bytes" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml", "huge.yaml", "m.onnx"]


def test_serve_on_a_port_in_use_is_a_clear_error(fuzz_models_dir, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        done = subprocess.run([sys.executable, "-m", "backend", "serve", "--port", str(port), "--state-file",
                               str(tmp_path / "s.json"), "--token-file", str(tmp_path / "t"), "--models-dir",
                               str(fuzz_models_dir)], cwd=REPO, capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert done.returncode == 2 and f"Cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "s.json").exists()


def test_a_token_file_readable_by_others_is_made_private(fuzz_models_dir, tmp_path):
    token_file = tmp_path / "config" / "token"
    token_file.parent.mkdir()
    token_file.write_text("an-existing-token\n")
    token_file.chmod(0o644)
    proc, state, _ = start_server(tmp_path, fuzz_models_dir)
    try:
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert token_file.read_text().strip() == "an-existing-token"  # kept, only its mode changed
    finally:
        stop(proc)


def test_model_metadata_is_bounded(tmp_path):
    """A 50 MB description makes the package unreadable (with the reason); a long one is cut for GET /models."""
    for name, description in (("huge", "x" * (50 * 1024 * 1024)), ("long", "y" * 100_000)):
        model = build_model()
        meta = default_metadata(3, 4, 64, 16)
        meta["description"] = description
        write_metadata(model, meta)
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
    registry = ModelRegistry([tmp_path])
    infos = {p.id: p.info() for p in registry.list()}
    assert list(infos) == ["long"] and len(infos["long"]["description"]) == MAX_DESCRIPTION_CHARS
    with pytest.raises(Exception, match=r"holds \d+ characters; at most 1048576 are read"):
        registry.get("huge")
    assert len(json.dumps(infos)) < 10_000


def test_job_records_expire_and_the_queue_is_bounded(fuzz_registry, corpus, tmp_path):
    manager = JobManager(fuzz_registry)
    try:
        spec = JobSpec("semantic_segmentation", "seg", [str(corpus["clean"].path)], {"raster": str(tmp_path / "a.tif")})
        job = manager.submit(spec)
        deadline = time.monotonic() + 60
        while manager.get(job.id).status in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert job.status == "succeeded" and job.plan is None  # a finished job keeps no plan (model, options)
        manager.KEEP_FINISHED_S = 0.0
        time.sleep(0.01)
        assert manager.get(job.id) is None and manager.list() == []
        manager.MAX_WAITING = 0
        with pytest.raises(TooManyJobsError, match="jobs are already waiting") as err:
            manager.submit(JobSpec("semantic_segmentation", "seg", [str(corpus["clean"].path)],
                                   {"raster": str(tmp_path / "b.tif")}))
        assert err.value.status_code == 429 and not (tmp_path / "b.tif").exists()
    finally:
        manager.shutdown()
    assert os.listdir(tmp_path) == ["a.tif"]
