"""FastAPI app implementing the HTTP contract (docs/contract.md §2)."""

from __future__ import annotations

import hmac
from typing import Any, Literal, Optional

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field

from backend import __version__
from backend.errors import BackendError
from backend.jobs import SUPPORTED_TASKS, Job, JobManager, JobSpec
from backend.raster_io import Extent
from backend.registry import ModelRegistry


class ClassModel(BaseModel):
    id: int
    name: str
    color: str


class ModelInfo(BaseModel):
    id: str
    name: str
    task: str
    description: str
    classes: list[ClassModel]
    tile_size: int
    tile_overlap: int
    gsd_m: Optional[float]
    bands: list[int]
    path: str


class ModelList(BaseModel):
    models: list[ModelInfo]


class ExtentModel(BaseModel):
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    crs: str = Field("", description="authid or WKT; empty = the raster's own coordinates")


class JobRequest(BaseModel):
    """docs/contract.md §2-3. Per task: semantic_segmentation inputs [raster], outputs {raster},
    options {batch_size}; change_detection inputs [before, after], outputs {raster, polygons?},
    options {batch_size, min_area_px}; scene_classification inputs [raster], outputs {vector},
    options {batch_size, cell_size}; detection and rotated_detection inputs [raster], outputs {vector},
    options {batch_size, score_threshold}."""

    # A plain string, not an enum: an unsupported task gets the backend's 400 message naming the
    # supported ones, like every other request check.
    task: str = Field("semantic_segmentation", description=f"one of: {', '.join(SUPPORTED_TASKS)}",
                      examples=list(SUPPORTED_TASKS))
    model: str = Field(description="model id (GET /models); its task must be `task`")
    inputs: list[str] = Field(min_length=1, description="absolute raster paths: [raster], or [before, after] "
                                                        "for change_detection")
    extent: Optional[ExtentModel] = None
    outputs: dict[str, str] = Field(description="result key -> absolute path: raster (.tif) for segmentation; "
                                                "raster and optional polygons (.gpkg) for change_detection; "
                                                "vector (.gpkg) for scene_classification, detection and "
                                                "rotated_detection")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="batch_size (1-256, default 4); change_detection: min_area_px, simplify_px "
                                                "(default 0, 0); scene_classification: cell_size (source pixels, "
                                                "default the model's tile_size); detection, rotated_detection: "
                                                "score_threshold (0-1, default the model's)")


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


class JobList(BaseModel):
    jobs: list[JobModel]


class ErrorDetail(BaseModel):
    detail: str = Field(description="what is wrong and what to do, naming the file or field")


class Health(BaseModel):
    status: str
    version: str


def create_app(registry: ModelRegistry, token: str, jobs: JobManager | None = None) -> FastAPI:
    jobs = jobs or JobManager(registry)
    app = FastAPI(title="mtp_qgis backend", version=__version__, docs_url=None, redoc_url=None)
    app.state.jobs = jobs
    expected = token.encode()

    public_paths = {"/health", "/openapi.json"}

    # A middleware, not a route dependency: it runs before the body is parsed, so a request without the
    # token gets 401 even when its JSON is malformed (a dependency would answer 422 first).
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

    def job_or_404(job_id: str) -> Job:
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"No job with id '{job_id}'.")
        return job

    @app.get("/health", response_model=Health)
    def health() -> dict:
        return {"status": "ok", "version": __version__}

    @app.get("/models", response_model=ModelList, dependencies=auth)
    def models() -> dict:
        return {"models": [m.info() for m in registry.list()]}

    refusals = {400: {"model": ErrorDetail, "description": "refused before queueing: bad input, output, extent, "
                                                           "option, or a model of another task"},
                401: {"model": ErrorDetail, "description": "missing or wrong token"},
                404: {"model": ErrorDetail, "description": "unknown model"}}

    @app.post("/jobs", response_model=JobModel, status_code=202, dependencies=auth, responses=refusals)
    def submit(body: JobRequest) -> dict:
        extent = Extent(**body.extent.model_dump()) if body.extent else None
        spec = JobSpec(body.task, body.model, body.inputs, body.outputs, extent, body.options)
        return jobs.submit(spec).to_dict()  # BackendError -> 400/404 before anything is queued

    @app.get("/jobs", response_model=JobList, dependencies=auth)
    def list_jobs() -> dict:
        return {"jobs": [j.to_dict() for j in jobs.list()]}

    @app.get("/jobs/{job_id}", response_model=JobModel, dependencies=auth)
    def get_job(job_id: str) -> dict:
        return job_or_404(job_id).to_dict()

    @app.post("/jobs/{job_id}/cancel", response_model=JobModel, dependencies=auth)
    def cancel(job_id: str) -> dict:
        job_or_404(job_id)
        return jobs.cancel(job_id).to_dict()

    return app
