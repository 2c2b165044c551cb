"""FastAPI app implementing the HTTP contract (docs/contract.md §2)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
from typing import Annotated, Any, Literal, Optional

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field, StringConstraints

from backend import __version__
from backend.errors import BackendError
from backend.jobs import Job, JobManager, JobSpec
from backend.outputs import PATH_MAX
from backend.raster_io import Extent
from backend.registry import ModelRegistry
from backend.tasks import SUPPORTED_TASKS

log = logging.getLogger(__name__)
# Long-polls hold one of the server's worker threads each: short enough that many clients cannot starve it.
MAX_WAIT_S = 10.0
MAX_BODY_BYTES = 256 * 1024  # a job request is a few hundred bytes; a WKT extent CRS a few kilobytes
MAX_JSON_DEPTH = 32
PathText = Annotated[str, StringConstraints(max_length=PATH_MAX)]
KeyText = Annotated[str, StringConstraints(max_length=64)]
PROOF_PREFIX = "mtp_qgis health"


def identity_proof(token: str, challenge: str, port: int | None) -> str:
    """HMAC-SHA256 of the challenge and the listening port under the token: only a process that knows the
    token can answer, and an answer relayed from a backend on another port does not fit (docs/contract.md §2)."""
    message = f"{PROOF_PREFIX} {challenge} {port if port is not None else '-'}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


class ClassModel(BaseModel):
    id: int
    name: str
    color: str


class ModelInfo(BaseModel):
    id: str
    name: str
    task: str
    dataset: str = Field("", description="what it was trained on (packages that say so)")
    encoder: str = Field("", description="the encoder, e.g. ViT-B+RVSA (packages that say so)")
    metric: str = Field("", description="its main figure and its kind, e.g. 'mIoU 0.524 (paper)', 'F1 0.742 (held out)'")
    description: str
    classes: list[ClassModel]
    tile_size: int
    tile_overlap: int
    gsd_m: Optional[float]
    bands: list[int]
    band_roles: list[str] = Field(default_factory=list, description="bands by role (blue, green, red, nir, ...) "
                                                                     "for models that run on any sensor having them")
    indices: list[str] = Field(default_factory=list, description="spectral index channels the model takes (ndvi, ...)")
    path: str


class ModelList(BaseModel):
    models: list[ModelInfo]


class ExtentModel(BaseModel):
    xmin: float = Field(allow_inf_nan=False)
    ymin: float = Field(allow_inf_nan=False)
    xmax: float = Field(allow_inf_nan=False)
    ymax: float = Field(allow_inf_nan=False)
    crs: str = Field("", max_length=65536, description="authid, WKT or PROJ string; empty = the raster's own "
                                                       "coordinates; URLs are not fetched")


class JobRequest(BaseModel):
    """docs/contract.md §2-3. Per task: semantic_segmentation inputs [raster], outputs {raster},
    options {batch_size}; change_detection inputs [before, after], outputs {raster, polygons?},
    options {batch_size, min_area_px}; scene_classification inputs [raster], outputs {vector},
    options {batch_size, cell_size}; detection, rotated_detection and instance_segmentation inputs [raster],
    outputs {vector},
    options {batch_size, score_threshold}; land_cover_extraction inputs [raster], outputs {vector}, options
    {instruction, sensor, batch_size}; spectral_indices (no model) inputs [raster], outputs {raster}, options
    {indices, sensor}; finetune (model = the base package) inputs [raster, labels vector] ([before, after,
    labels vector] for a change_detection base), outputs {report?},
    options {class_field, model_id, models_dir, validation, iterations, time_budget_s, batch_size}. Every task
    with a model takes options.sensor."""

    # A plain string, not an enum: an unsupported task gets the backend's 400 message naming the
    # supported ones, like every other request check.
    task: str = Field("semantic_segmentation", description=f"one of: {', '.join(SUPPORTED_TASKS)}",
                      examples=list(SUPPORTED_TASKS))
    model: str = Field("", max_length=255, description="model id (GET /models); its task must be `task`; empty "
                                                        "for spectral_indices, which runs no model")
    inputs: list[PathText] = Field(min_length=1, max_length=3,
                                   description="absolute raster paths: [raster], or [before, after] for "
                                               "change_detection; finetune [raster, labels] or, for a "
                                               "change_detection base, [before, after, labels]; local files only")
    extent: Optional[ExtentModel] = None
    outputs: dict[KeyText, PathText] = Field(
        max_length=4, description="result key -> absolute path: raster (.tif/.tiff) for segmentation and "
                                  "spectral_indices; raster and optional polygons (.gpkg) for change_detection; vector "
                                  "(.gpkg) for scene_classification, detection, rotated_detection, "
                                  "instance_segmentation and land_cover_extraction")
    options: dict[KeyText, Any] = Field(default_factory=dict, max_length=8,
                                        description="batch_size (1-256, default 4); change_detection: min_area_px, "
                                                    "simplify_px (default 0, 0); scene_classification: cell_size "
                                                    "(source pixels, default the model's scene.cell_size or "
                                                    "tile_size); detection, rotated_detection, instance_segmentation: "
                                                    "score_threshold (0-1, default the model's); "
                                                    "land_cover_extraction: instruction (text); spectral_indices: "
                                                    "indices (names, default all the bands allow); every task: sensor "
                                                    "(auto or a preset name), cluster (true: the backend's "
                                                    "--cluster, or local[:N] or a Dask scheduler address) and "
                                                    "block_size (64-65536 px, default 4096) to run on a Dask "
                                                    "cluster. Other keys are refused.")
    overwrite: bool = Field(False, description="replace output files that exist (regular files only; never an "
                                               "input, the token or a model); without it an existing output is "
                                               "refused with 409")


class JobModel(BaseModel):
    id: str
    task: str
    model: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: float
    message: str
    error: Optional[str]
    outputs: Optional[dict[str, str]]
    created: float
    started: Optional[float]
    finished: Optional[float]
    device: Optional[str] = Field(None, description="where a succeeded job ran, e.g. 'CUDA: NVIDIA H200' or "
                                                    "'CPU (8 cores)', or '2 Dask workers: CPU (1 core)' for a cluster job")
    provider: Optional[str] = Field(None, description="the ONNX Runtime provider that ran the model")
    megapixels_per_s: Optional[float] = Field(None, description="megapixels of the job's window per second of the "
                                                                "whole run (read, infer, write)")
    dashboard: Optional[str] = None  # the Dask dashboard of a job that runs on a cluster (options.cluster)


class JobList(BaseModel):
    jobs: list[JobModel]


class ErrorDetail(BaseModel):
    detail: str = Field(description="what is wrong and what to do, naming the file or field")


class Health(BaseModel):
    status: str
    version: str
    proof: Optional[str] = Field(None, description="with ?challenge=C: HMAC-SHA256 under the token of "
                                                   f"'{PROOF_PREFIX} C PORT' (hex)")


class JsonGuard:
    """ASGI middleware, inside the token check: a request body is at most MAX_BODY_BYTES (413), and JSON is
    strict, i.e. no NaN/Infinity literals, no number that overflows a float, no nesting deeper than
    MAX_JSON_DEPTH (400). FastAPI would otherwise accept NaN and then fail to encode the 422 that echoes it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY_BYTES:
                return await _reply(send, 413, f"The request body is over {MAX_BODY_BYTES} bytes; a job request "
                                               "is a few hundred.")
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        problem = strict_json_problem(body)
        if problem:
            return await _reply(send, 400, f"The request body is not acceptable JSON: {problem}.")
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def strict_json_problem(body: bytes) -> str | None:
    """Why `body` is not strict JSON within bounds, or None (also for text that is no JSON at all: FastAPI
    answers that with its own 422)."""
    if not body.strip():
        return None

    def refuse_constant(name: str):
        raise ValueError(f"{name} is not a JSON number")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"the number {text[:40]} is too large")
        return value

    try:
        value = json.loads(body, parse_constant=refuse_constant, parse_float=finite)
    except RecursionError:
        return f"nested more than {MAX_JSON_DEPTH} levels deep"
    except json.JSONDecodeError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        return str(exc)
    return _walk_problem(value, 1)


def _walk_problem(value: Any, level: int) -> str | None:
    """Too deep, or a string that is not valid Unicode (a lone surrogate escape such as \\ud800)."""
    if level > MAX_JSON_DEPTH:
        return f"nested more than {MAX_JSON_DEPTH} levels deep"
    if isinstance(value, dict):
        children = [*value.keys(), *value.values()]
    elif isinstance(value, list):
        children = value
    else:
        children = [value] if isinstance(value, str) else []
        for text in children:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return f"the text {text[:40]!r} is not valid Unicode (a lone surrogate)"
        return None
    for child in children:
        problem = _walk_problem(child, level + 1)
        if problem:
            return problem
    return None


async def _reply(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _json_safe(value: Any) -> Any:
    """A validation error's details as JSON can carry them: non-finite floats and bytes become text."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def create_app(registry: ModelRegistry, token: str, jobs: JobManager | None = None,
               port: int | None = None) -> FastAPI:
    """port: where the server listens, bound into the /health identity proof (None in-process)."""
    jobs = jobs or JobManager(registry)
    # /docs (Swagger UI) is not served: it would load its scripts from a CDN. The schema is /openapi.json.
    app = FastAPI(title="mtp_qgis backend", version=__version__, docs_url=None, redoc_url=None)
    app.state.jobs = jobs
    expected = token.encode()

    public_paths = {"/health", "/openapi.json"}

    app.add_middleware(JsonGuard)

    # A middleware, not a route dependency: it runs before the body is parsed, so a request without the
    # token gets 401 even when its JSON is malformed (a dependency would answer 422 first). Added after
    # JsonGuard, so it runs before it: nothing of the body is read without the token.
    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if request.url.path not in public_paths:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            # compare_digest: the time taken must not reveal how much of the token matched.
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
                return JSONResponse({"detail": "Missing or wrong token: send 'Authorization: Bearer <token>'."},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    # Declared for the OpenAPI schema only; the middleware above does the checking.
    auth = [Depends(HTTPBearer(auto_error=False, description="the per-install token"))]

    @app.exception_handler(BackendError)
    async def backend_error(_: Request, exc: BackendError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _json_safe(exc.errors())}, status_code=422)

    def job_or_404(job_id: str) -> Job:
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"No job with id '{job_id[:64]}' (finished jobs are kept for "
                                     f"{jobs.KEEP_FINISHED_S / 3600:g} h).")
        return job

    def responses(*codes: int) -> dict:
        text = {400: "refused before queueing: bad input, output, extent, option, or a model of another task",
                401: "missing or wrong token", 404: "unknown model or job",
                409: "an output exists and overwrite is not set, or another job is writing it",
                413: "request body too large", 422: "the body does not match the schema",
                429: "too many jobs waiting"}
        return {code: {"model": ErrorDetail if code != 422 else None, "description": text[code]} for code in codes}

    @app.get("/health", response_model=Health, response_model_exclude_none=True)
    def health(challenge: Optional[str] = Query(None, pattern="^[0-9a-fA-F]{16,128}$",
                                                description="a random hex string; the answer's `proof` shows "
                                                            "that the server knows the token")) -> dict:
        answer = {"status": "ok", "version": __version__}
        if challenge:
            answer["proof"] = identity_proof(token, challenge, port)
        return answer

    @app.get("/models", response_model=ModelList, dependencies=auth, responses=responses(401))
    def models() -> dict:
        return {"models": [m.info() for m in registry.list()]}

    @app.post("/jobs", response_model=JobModel, status_code=202, dependencies=auth,
              responses=responses(400, 401, 404, 409, 413, 422, 429))
    def submit(body: JobRequest) -> dict:
        extent = Extent(**body.extent.model_dump()) if body.extent else None
        spec = JobSpec(body.task, body.model, body.inputs, body.outputs, extent, body.options, body.overwrite)
        return jobs.submit(spec).to_dict()  # BackendError -> 400/404/409/429 before anything is queued

    @app.get("/jobs", response_model=JobList, dependencies=auth, responses=responses(401))
    def list_jobs() -> dict:
        return {"jobs": [j.to_dict() for j in jobs.list()]}

    @app.get("/jobs/{job_id}", response_model=JobModel, dependencies=auth, responses=responses(401, 404))
    def get_job(job_id: str,
                wait: float = Query(0.0, ge=0.0, le=MAX_WAIT_S,
                                    description="long-poll: answer once the job's status is no longer `status`, at "
                                                "the latest after this many seconds"),
                status: Optional[str] = Query(None, max_length=20, description="the status the client last saw")
                ) -> dict:
        if wait > 0 and status is not None:
            job = jobs.wait_for_status(job_id, status, wait)
            if job is not None:
                return job.to_dict()
        return job_or_404(job_id).to_dict()

    @app.post("/jobs/{job_id}/cancel", response_model=JobModel, dependencies=auth, responses=responses(401, 404))
    def cancel(job_id: str) -> dict:
        job_or_404(job_id)
        return jobs.cancel(job_id).to_dict()

    return app
