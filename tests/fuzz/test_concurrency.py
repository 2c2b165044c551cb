"""20 jobs submitted at once to the real server (HTTP, uvicorn), two of them to the same output: the second
of those is refused (409) while the first holds the name, every other job succeeds with a valid result,
and no partial file is left."""

import json
import threading
import time

import pytest
import requests
from osgeo import gdal

from backend_test_data import start_server, stop
from fuzz_support import TALLY

gdal.UseExceptions()
JOBS = [("semantic_segmentation", "seg", "raster", ".tif"), ("scene_classification", "scene", "vector", ".gpkg"),
        ("detection", "det", "vector", ".gpkg"), ("rotated_detection", "rdet", "vector", ".gpkg"),
        ("change_detection", "change", "raster", ".tif")]


@pytest.mark.slow
def test_twenty_concurrent_jobs_two_to_the_same_output(fuzz_models_dir, corpus, tmp_path):
    proc, state, token_file = start_server(tmp_path, fuzz_models_dir)
    try:
        url = json.loads(state.read_text())["url"]
        auth = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        out = tmp_path / "out"
        out.mkdir()
        base = str(corpus["clean"].path)
        bodies = []
        for n in range(19):
            task, model, key, ext = JOBS[n % len(JOBS)]
            bodies.append({"task": task, "model": model, "inputs": [base, base] if task == "change_detection" else [base],
                           "outputs": {key: str(out / f"job{n}{ext}")}, "options": {"batch_size": 1 + n % 3}})
        bodies.append(dict(bodies[0]))  # the same output as job 0, at the same moment
        answers = [None] * len(bodies)
        start = threading.Barrier(len(bodies))

        def submit(i):
            start.wait()
            answers[i] = requests.post(url + "/jobs", json=bodies[i], headers=auth, timeout=60)

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = [a.status_code for a in answers]
        assert sorted(codes) == [202] * 19 + [409], codes
        refused = answers[codes.index(409)].json()["detail"]
        assert "job0.tif" in refused and ("is already writing" in refused or "already exists" in refused), refused
        ids = [a.json()["id"] for a in answers if a.status_code == 202]
        deadline = time.monotonic() + 240
        while True:
            jobs = {j["id"]: j for j in requests.get(url + "/jobs", headers=auth, timeout=10).json()["jobs"]}
            if all(jobs[i]["status"] in ("succeeded", "failed", "cancelled") for i in ids):
                break
            assert time.monotonic() < deadline, "jobs did not finish"
            time.sleep(0.2)
        assert [jobs[i]["status"] for i in ids] == ["succeeded"] * 19, [jobs[i]["error"] for i in ids]
        written = sorted(p.name for p in out.iterdir())
        assert written == sorted(f"job{n}{JOBS[n % len(JOBS)][3]}" for n in range(19))  # no partial file
        for path in out.iterdir():
            assert gdal.OpenEx(str(path)) is not None
        TALLY.notes.append(f"concurrent jobs: {len(bodies)} submitted at once, {codes.count(202)} accepted and "
                           f"succeeded, {codes.count(409)} refused (409, same output)")
    finally:
        stop(proc)
