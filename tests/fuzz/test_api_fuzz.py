"""Schema-driven fuzzing of every endpoint of the in-process app: requests generated from its own OpenAPI
schema (fuzz_support.schema_strategy), paths drawn from real and hostile files, raw bodies that are not
JSON or not strict JSON. Nothing may answer 5xx; every answer is JSON; every job that runs either
succeeds or fails with a message (never a bare exception name), and leaves no partial file.

Profiles (environment MTP_FUZZ_PROFILE): "ci" (default: fixed seed, a few hundred requests per test, about
a minute) and "deep" (random seed, ten times as many)."""

import dataclasses
import os
import re
import time
import urllib.parse

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.api import create_app
from backend.jobs import JobManager
from fuzz_support import COGEO, NASTY_TEXT, TALLY, copy_into, dumps, schema_strategy

TOKEN = "fuzz-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
settings.register_profile("ci", max_examples=1000, deadline=None, derandomize=True, database=None,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("deep", max_examples=10000, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
PROFILE = os.environ.get("MTP_FUZZ_PROFILE", "ci")
# A job error that is only an exception's name and text is a bug that escaped the backend's checks.
BARE_EXCEPTION = re.compile(r"^[A-Z][A-Za-z]*(Error|Exception)\b")


pytestmark = pytest.mark.slow  # the whole file (README.md, Development): not in `make test-fast`


@pytest.fixture(scope="module")
def app_and_files(fuzz_registry, fuzz_models_dir, corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("api_fuzz")
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n")
    out = folder / "out"
    out.mkdir()
    existing = out / "existing.tif"
    existing.write_bytes(b"an earlier result")
    (out / "a_folder.tif").mkdir()
    os.mkfifo(out / "fifo.tif")
    (out / "link.tif").symlink_to(token_file)
    # A copy of the corpus: fuzzed jobs may replace an input file of another job (overwrite is theirs to ask).
    corpus = {name: dataclasses.replace(r, path=copy_into(r.path, folder / "corpus")) for name, r in corpus.items()}
    jobs = JobManager(fuzz_registry, protected={token_file: "the backend's token file"})
    app = create_app(fuzz_registry, TOKEN, jobs, port=8765)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield {"client": client, "app": app, "jobs": jobs, "out": out, "token_file": token_file,
               "existing": existing, "models": fuzz_models_dir, "corpus": corpus}
    jobs.shutdown()


def paths(files):
    """Input and output paths worth trying: real rasters (good and bad), files that must never be replaced,
    things that are not files, hostile text."""
    corpus = files["corpus"]
    out = files["out"]
    real = [str(r.path) for r in corpus.values()]
    outputs = [str(out / f"r{i}.tif") for i in range(6)] + [str(out / f"v{i}.gpkg") for i in range(6)]
    special = [str(files["existing"]), str(out / "a_folder.tif"), str(out / "fifo.tif"), str(out / "link.tif"),
               str(files["token_file"]), str(files["models"] / "seg.onnx"), str(out / "no" / "such" / "x.tif"),
               "relative.tif", str(out / ("n" * 250 + ".tif")), str(out / "nul\0.tif"), "/dev/null", "/dev/full.tif"]
    return st.sampled_from(real + outputs + special + NASTY_TEXT)


def send(client, method, path, **kwargs):
    response = client.request(method, path, **kwargs)
    template = re.sub(r"^/jobs/[^/]+", "/jobs/{job_id}", path.split("?")[0]) if path.startswith("/jobs/") else path.split("?")[0]
    TALLY.request(method, template, response.status_code)
    assert response.status_code < 500, f"{method} {path} -> {response.status_code}: {response.text[:500]}"
    body = response.json()  # every answer is JSON
    if response.status_code >= 400:
        assert isinstance(body.get("detail"), (str, list)) and body["detail"], body
    return response


TASKS = {  # task -> (models of that task, output key -> extension, options it takes)
    "semantic_segmentation": (["seg", "seg_context", "seg16", "s2"], {"raster": ".tif"}, ["batch_size"]),
    "change_detection": (["change"], {"raster": ".tif", "polygons": ".gpkg"}, ["batch_size", "min_area_px"]),
    "scene_classification": (["scene"], {"vector": ".gpkg"}, ["batch_size", "cell_size"]),
    "detection": (["det"], {"vector": ".gpkg"}, ["batch_size", "score_threshold"]),
    "rotated_detection": (["rdet"], {"vector": ".gpkg"}, ["batch_size", "score_threshold"]),
}
GOOD_INPUTS = ["clean", "float32, one NaN pixel", "float32, all NaN", "int16 (8-bit values)", "1 x 1",
               "rotated geotransform", "uint16 (8-bit x 257)"]


def job_request(files):
    """Requests built from the JobRequest schema; a third wholly generated, a third consistent (a task's
    model, inputs and outputs, so that jobs really run), a third consistent but for one hostile field."""
    schema = files["app"].openapi()
    components = schema["components"]["schemas"]
    generic = schema_strategy(components["JobRequest"], components)
    hostile_path = paths(files)
    corpus = files["corpus"]
    good_input = st.sampled_from([str(corpus[name].path) for name in GOOD_INPUTS])

    @st.composite
    def build(draw):
        mode = draw(st.sampled_from(["generic", "consistent", "one hostile field"]))
        body = draw(generic)
        if mode == "generic":
            return body
        task = draw(st.sampled_from(sorted(TASKS)))
        models, outputs, options = TASKS[task]
        n = draw(st.uuids()).hex[:8]  # a fresh output name
        body.update(task=task, model=draw(st.sampled_from(models)),
                    inputs=[draw(good_input) for _ in range(2 if task == "change_detection" else 1)],
                    outputs={k: str(files["out"] / f"job{n}_{k}{ext}") for k, ext in outputs.items()
                             if k != "polygons" or draw(st.booleans())},
                    options={k: draw(st.sampled_from({"batch_size": [1, 2, 4], "min_area_px": [0, 5],
                                                      "cell_size": [16, 32, 64], "score_threshold": [0.3, 0.9]}[k]))
                             for k in options if draw(st.booleans())},
                    overwrite=draw(st.booleans()))
        body.pop("extent", None)
        if mode == "one hostile field":
            field = draw(st.sampled_from(["inputs", "outputs", "options", "extent", "model", "task"]))
            if field == "inputs":
                body["inputs"][0] = draw(hostile_path)
            elif field == "outputs":
                body["outputs"][next(iter(body["outputs"]))] = draw(hostile_path)
            else:
                body[field] = draw(generic).get(field)
        return body

    return build()


OPERATIONS = [("/health", "GET"), ("/openapi.json", "GET"), ("/models", "GET"), ("/jobs", "POST"), ("/jobs", "GET"),
              ("/jobs/{job_id}", "GET"), ("/jobs/{job_id}/cancel", "POST")]
EXAMPLES = {"/jobs": 4}  # POST /jobs (the one with a body) gets this many times the examples of the others


def test_operations_are_those_of_the_schema(app_and_files):
    schema = app_and_files["app"].openapi()
    assert sorted((p, m.upper()) for p, item in schema["paths"].items() for m in item) + [("/openapi.json", "GET")] \
        == sorted(OPERATIONS)


@pytest.mark.parametrize("path,method", OPERATIONS)
def test_every_endpoint_answers_without_5xx(app_and_files, path, method):
    base = settings.get_profile(PROFILE).max_examples // 8
    examples = base * (EXAMPLES["/jobs"] if (path, method) == ("/jobs", "POST") else 1)

    @settings(settings.get_profile(PROFILE), max_examples=examples)
    @given(data=st.data())
    def fuzz(data):
        fuzz_one(app_and_files, path, method, data)

    fuzz()


def fuzz_one(files, path, method, data):
    client = files["client"]
    headers = data.draw(st.sampled_from([AUTH, AUTH, AUTH, {}, {"Authorization": "Bearer wrong"},
                                         {"Authorization": TOKEN}]))
    if "{job_id}" in path:
        # Drawn as an index into the jobs that exist (the draw must not depend on them: hypothesis replays it).
        known = [j.id for j in files["jobs"].list()] or ["none"]
        pick = data.draw(st.one_of(st.integers(0, 99), st.text(max_size=20), st.sampled_from(NASTY_TEXT)))
        job_id = known[pick % len(known)] if isinstance(pick, int) else pick
        path = path.replace("{job_id}", urllib.parse.quote(job_id, safe="", errors="surrogatepass") or "x")
    if path == "/health" and data.draw(st.booleans()):
        challenge = data.draw(st.one_of(st.from_regex(r"\A[0-9a-f]{16,128}\Z"), st.text(max_size=200)))
        path += "?" + urllib.parse.urlencode({"challenge": challenge}, errors="surrogatepass")
    kwargs = {"headers": headers}
    if method == "POST" and path == "/jobs":
        kwargs["content"] = dumps(data.draw(job_request(files)))
        kwargs["headers"] = {**headers, "Content-Type": "application/json"}
    response = send(client, method, path, **kwargs)
    if headers is not AUTH and path not in ("/health", "/openapi.json") and not path.startswith("/health?"):
        assert response.status_code == 401


RAW_BODIES = [
    b'{"model": "seg", "inputs": [NaN], "outputs": {"raster": "/tmp/x.tif"}}',
    b'{"model": "seg", "inputs": ["/x.tif"], "outputs": {"raster": "/tmp/x.tif"}, "extent": '
    b'{"xmin": -Infinity, "ymin": 0, "xmax": Infinity, "ymax": 1}}',
    b'{"model": "seg", "inputs": ["/x.tif"], "outputs": {}, "options": {"score_threshold": 1e400}}',
    b'{"model": "seg", "inputs": ["/x.tif"], "outputs": {}, "options": {"cell_size": 1' + b"0" * 400 + b"}}",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a": ' * 50 + b"1" + b"}" * 50,
    b"\xff\xfe not utf-8",
    b"",
    b"null",
    b'"just a string"',
    b'{"model": "seg"',
    b"x" * (300 * 1024),
]


@pytest.mark.parametrize("body", RAW_BODIES, ids=lambda b: repr(b[:30]))
def test_raw_bodies_that_are_not_strict_json(app_and_files, body):
    response = send(app_and_files["client"], "POST", "/jobs", content=body,
                    headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code in (400, 413, 422)


@settings(settings.get_profile(PROFILE), max_examples=settings.get_profile(PROFILE).max_examples // 4)
@given(body=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_random_bytes_as_a_job_request(app_and_files, body):
    response = send(app_and_files["client"], "POST", "/jobs", content=body,
                    headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code in (400, 404, 409, 413, 422, 429) or response.status_code == 202


@pytest.mark.parametrize("case,fragment", [
    ({"extent": {"xmin": -1e308, "ymin": -1e308, "xmax": 1e308, "ymax": 1e308, "crs": "EPSG:4326"}}, "out of range"),
    ({"outputs": {"raster": "OUT/a\0b.tif"}}, "contains a NUL byte"),
    ({"outputs": {"raster": "OUT/" + "a" * 300 + ".tif"}}, "file names may have at most 255 bytes"),
    ({"outputs": {"raster": "OUT/" + "a" * 240 + ".tif"}}, "too long to write beside it as a partial file"),
    ({"outputs": {"raster": "OUT/\ud800.tif"}}, "is not valid Unicode"),
    ({"task": "scene_classification", "model": "scene", "outputs": {"vector": "OUT/s.gpkg"},
      "options": {"cell_size": 10**400}}, "options.cell_size must be"),
    ({"task": "scene_classification", "model": "scene", "outputs": {"vector": "OUT/s.gpkg"}, "inputs": [str(COGEO)],
      "options": {"cell_size": 1}}, "a job may have at most 1000000"),
    ({"task": "detection", "model": "det", "outputs": {"vector": "OUT/d.gpkg"},
      "options": {"score_threshold": 10**400}}, "options.score_threshold must be"),
    ({"options": {"batch_size": 4, "colour": "red"}}, "options colour are not options of semantic_segmentation"),
    ({"outputs": {"raster": "OUT/r.tif", "polygons": "OUT/p.gpkg"}}, "outputs polygons are not results of"),
    ({"outputs": {"raster": "OUT/.bashrc"}}, "must be a .tif or .tiff file"),
    ({"extent": {"xmin": 0, "ymin": 0, "xmax": 1, "ymax": 1, "crs": "https://example.com/crs"}}, "is a URL"),
])
def test_the_issues_500s_are_clear_4xx(app_and_files, corpus, case, fragment):
    """Each request that answered 500 before (docs of issue 16) now gets a 4xx naming the problem."""
    out = str(app_and_files["out"])
    body = {"task": "semantic_segmentation", "model": "seg", "inputs": [str(corpus["clean"].path)],
            "outputs": {"raster": f"{out}/ok.tif"}}
    body.update({k: ({kk: vv.replace("OUT", out) for kk, vv in v.items()} if k == "outputs" else v)
                 for k, v in case.items()})
    response = send(app_and_files["client"], "POST", "/jobs", content=dumps(body),
                    headers={**AUTH, "Content-Type": "application/json"})
    assert 400 <= response.status_code < 500 and fragment in str(response.json()["detail"]), response.text


def test_schema_declares_every_answer(app_and_files):
    schema = app_and_files["app"].openapi()
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            if path not in ("/health",):
                assert "401" in codes, (method, path)
            if "{job_id}" in path:
                assert "404" in codes, (method, path)
    assert {"400", "401", "404", "409", "413", "422", "429"} <= set(schema["paths"]["/jobs"]["post"]["responses"])
    assert send(app_and_files["client"], "GET", "/docs").status_code == 401  # not public
    assert send(app_and_files["client"], "GET", "/docs", headers=AUTH).status_code == 404  # and not served


def test_jobs_the_fuzzer_started_end_cleanly(app_and_files):
    """Runs last in this module: every job the fuzzing queued ends; failures say why; no partial file stays."""
    jobs = app_and_files["jobs"]
    deadline = time.monotonic() + 300
    while any(j.status in ("queued", "running") for j in jobs.list()):
        assert time.monotonic() < deadline, "fuzzed jobs did not finish"
        time.sleep(0.1)
    finished = jobs.list()
    by_status = {}
    for job in finished:
        by_status[job.status] = by_status.get(job.status, 0) + 1
        if job.status == "failed":
            assert job.error and not BARE_EXCEPTION.match(job.error), job.error
    TALLY.notes.append(f"jobs queued by the API fuzzing: {len(finished)}; "
                       + ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items())))
    leftovers = [p.name for p in app_and_files["out"].rglob("*") if ".partial" in p.name]
    assert leftovers == []
    out = app_and_files["out"]
    assert app_and_files["token_file"].read_text().strip() == TOKEN  # never replaced, whatever was asked
    assert (out / "a_folder.tif").is_dir() and (out / "fifo.tif").is_fifo() and (out / "link.tif").is_symlink()
    assert (app_and_files["models"] / "seg.onnx").read_bytes()[:4] != b"II*\0"  # still ONNX, not a GeoTIFF
