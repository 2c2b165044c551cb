"""Jobs: request validation, a queue served by one worker thread, status, progress and cancel."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend import outputs
from backend.errors import BackendError, ConflictError, JobCancelled, TooManyJobsError
from backend.finetune import FinetuneRequest
from backend.plans import JobSpec, Plan, PlanContext
from backend.registry import ModelRegistry
from backend.segmentation import SegmentationRequest
from backend.sessions import session_info
from backend.tasks import SUPPORTED_TASKS, TASKS, TaskSpec

log = logging.getLogger(__name__)
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Job:
    id: str
    spec: JobSpec
    plan: Plan | None  # dropped once the job has finished: a finished job keeps only what GET /jobs shows
    status: str = "queued"
    progress: float = 0.0
    message: str = "queued"
    error: str | None = None
    outputs: dict[str, str] | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    output_paths: tuple[Path, ...] = ()  # resolved, to refuse a second job writing the same file
    report: dict[str, Any] = field(default_factory=dict)  # run_report of a job that succeeded
    cluster: str | None = None  # the Dask scheduler address (or local[:N]) the job runs on; None: here
    block_size: int = 0  # pixels a side of its cluster blocks
    dashboard: str | None = None  # the cluster's dashboard, once connected

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "task": self.spec.task, "model": self.spec.model, "status": self.status,
            "progress": round(self.progress, 2), "message": self.message, "error": self.error,
            "outputs": self.outputs if self.status == "succeeded" else None,
            "created": self.created, "started": self.started, "finished": self.finished,
            "device": self.report.get("device"), "provider": self.report.get("provider"),
            "megapixels_per_s": self.report.get("megapixels_per_s"),
            "dashboard": self.dashboard,
        }


def plan_job(spec: JobSpec, registry: ModelRegistry, job_id: str,
             protected: dict[Path, str] | None = None) -> Plan:
    """Every check that can be made before the job is queued; raises BackendError (400/404/409).
    protected: files no output may replace besides the inputs (the token and state files), -> what they are."""
    if spec.task not in TASKS:
        raise BackendError(f"Task '{spec.task}' is not supported yet; supported: {', '.join(SUPPORTED_TASKS)}.")
    task = TASKS[spec.task]
    if not task.model_tasks:
        if spec.model:
            raise BackendError(f"{spec.task} runs no model; leave 'model' empty (got '{spec.model[:80]}').")
        model = None
    else:
        model = registry.get(spec.model)
        if model.task not in task.model_tasks:  # finetune takes a segmentation or detection base package
            wanted = " or ".join(task.model_tasks)
            raise BackendError(f"Model '{spec.model}' does {model.task}, not {wanted}; pick a {wanted} model.")
    _check_keys(spec, task)
    guarded = dict(protected or {})
    guarded.update({p: "a model package" for p in registry.model_files()})
    return task.planner(spec, model, PlanContext(job_id, guarded, registry))


def run_plan(task: str, plan: Plan, progress=None, cancelled=None) -> dict[str, str]:
    """Run a planned job in this thread; returns the outputs written (key -> path). A plan without a batch
    size gets the session's: 4 on the CPU, what fits the free memory on a GPU (sessions.probe_batch_size)."""
    if getattr(plan, "batch_size", 0) is None:
        plan.batch_size = session_info(plan.model.path).batch_size
    return TASKS[task].runner(plan, progress, cancelled)


def run_report(plan: Plan, seconds: float) -> dict[str, Any]:
    """Where a finished job ran and how fast: the provider, the device in words, megapixels of its window per
    second of the whole run (read, infer, write). A finetune job has none: its figures are its held-out scores."""
    if isinstance(plan, FinetuneRequest):
        return {}
    info = session_info(plan.model.path)
    window = plan.window
    return {"provider": info.provider, "device": info.device, "batch_size": plan.batch_size,
            "megapixels_per_s": round(window.width * window.height / 1e6 / max(seconds, 1e-9), 3)}


def plan_outputs(plan: Plan) -> list[Path]:
    """The output files a planned job writes."""
    if isinstance(plan, SegmentationRequest):
        return [plan.output_path]
    return [Path(p) for p in plan.outputs.values()]


# Options of every task that say where it runs, checked by cluster.job_cluster (JobManager.submit).
CLUSTER_OPTIONS = ("cluster", "block_size")


def _check_keys(spec: JobSpec, rules: TaskSpec) -> None:
    """Output and option keys the task does not know are refused, for every task alike."""
    for key in rules.required_outputs:
        if key not in spec.outputs:
            raise BackendError(f"outputs.{key} ({rules.output_hints[key]}) is required for {spec.task}.")
    known = rules.required_outputs + rules.optional_outputs
    unknown = sorted(set(spec.outputs) - set(known))
    if unknown:
        raise BackendError(f"outputs {', '.join(unknown)} are not results of {spec.task}; "
                           f"it writes {', '.join(known)}.")
    unknown = sorted(set(spec.options) - set(rules.options))
    if unknown:
        if set(unknown) <= set(CLUSTER_OPTIONS):
            raise BackendError(f"options {', '.join(unknown)} choose a cluster; they are taken by the job API "
                               "(POST /jobs), or --cluster / --block-size on the command line.")
        raise BackendError(f"options {', '.join(unknown)[:300]} are not options of {spec.task}; "
                           f"it takes {', '.join(rules.options)}, and {', '.join(CLUSTER_OPTIONS)} in the job API.")




# ---------------------------------------------------------------------------------------------- tasks





def failure_message(exc: BaseException, plan: Plan | None) -> str:
    """An unexpected failure (not a BackendError) of a running job, in words: a full disk named as such."""
    return outputs.failure_message(exc, plan_outputs(plan) if plan is not None else [])


class JobManager:
    """Jobs run one at a time (ONNX Runtime already uses every core) in submission order.

    Bounded: at most MAX_WAITING jobs wait (more are refused, 429), and finished jobs are forgotten
    KEEP_FINISHED_S after they end, or sooner once more than MAX_FINISHED have finished."""

    MAX_WAITING = 100
    KEEP_FINISHED_S = 3600.0
    MAX_FINISHED = 1000

    def __init__(self, registry: ModelRegistry, protected: dict[Path, str] | None = None,
                 default_cluster: str | None = None):
        """default_cluster: where jobs with options.cluster true run (serve --cluster)."""
        self.default_cluster = default_cluster
        self.registry = registry
        self.protected = dict(protected or {})
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._status_changed = threading.Condition(self._lock)  # notified whenever a job's status changes
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="job-worker", daemon=True)
        self._worker.start()

    def submit(self, spec: JobSpec) -> Job:
        job_id = uuid.uuid4().hex[:12]
        with self._lock:
            self._purge()
            waiting = sum(j.status == "queued" for j in self._jobs.values())
        if waiting >= self.MAX_WAITING:
            raise TooManyJobsError(f"{waiting} jobs are already waiting; wait for some to finish or cancel them.")
        from backend.cluster import job_cluster, refuse_unless_cluster_task

        address, block_size = job_cluster(spec.options, self.default_cluster)  # refused here, before planning
        if address is not None:
            refuse_unless_cluster_task(spec.task)
        task_spec = spec if address is None and "block_size" not in spec.options else JobSpec(
            spec.task, spec.model, spec.inputs, spec.outputs, spec.extent,
            {k: v for k, v in spec.options.items() if k not in CLUSTER_OPTIONS}, spec.overwrite)
        plan = plan_job(task_spec, self.registry, job_id, self.protected)
        paths = tuple(p.resolve() for p in plan_outputs(plan))
        job = Job(job_id, spec, plan, output_paths=paths, cluster=address, block_size=block_size)
        with self._lock:
            for other in self._jobs.values():
                if other.status in TERMINAL:
                    continue
                clash = set(paths) & set(other.output_paths)
                if clash:
                    raise ConflictError(f"Job {other.id} ({other.status}) is already writing {sorted(clash)[0]}; "
                                        "wait for it to finish or cancel it, or choose another output name.")
            self._jobs[job_id] = job
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            self._purge()
            return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        with self._lock:
            self._purge()
            return sorted(self._jobs.values(), key=lambda j: j.created)

    def _purge(self) -> None:
        """Forget finished jobs older than KEEP_FINISHED_S, and the oldest beyond MAX_FINISHED (lock held)."""
        now = time.time()
        finished = sorted((j for j in self._jobs.values() if j.status in TERMINAL and j.finished is not None),
                          key=lambda j: j.finished)
        excess = len(finished) - self.MAX_FINISHED
        for n, job in enumerate(finished):
            if n < excess or now - job.finished > self.KEEP_FINISHED_S:
                del self._jobs[job.id]

    def cancel(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        if job is None:
            return None
        with self._lock:
            job.cancel_requested.set()
            if job.status == "queued":  # never started: nothing to clean up
                job.status, job.message, job.finished = "cancelled", "cancelled before start", time.time()
                self._status_changed.notify_all()
                job.plan = None
        return job

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel everything and wait for the worker, so no partial file outlives the server."""
        for job in self.list():
            if job.status not in TERMINAL:
                self.cancel(job.id)
        self._queue.put(None)
        self._worker.join(timeout)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.status != "queued":
                    continue
                job.status, job.started, job.message = "running", time.time(), "starting"
                self._status_changed.notify_all()
            self._run(job)

    def wait_for_status(self, job_id: str, status: str, timeout: float) -> Job | None:
        """The job once its status is no longer `status`, else after `timeout` seconds as it is then (a long-poll:
        the end of a job reaches the client at once, its progress at the pace the client asks); None for an
        unknown job."""
        job = self.get(job_id)
        if job is None:
            return None
        with self._status_changed:
            self._status_changed.wait_for(lambda: job.status != status, timeout)
        return job

    def _run(self, job: Job) -> None:
        def progress(percent: float, message: str) -> None:
            job.progress, job.message = percent, message

        def on_dashboard(link: str) -> None:
            job.dashboard = link

        try:
            if job.cluster is not None:
                from backend.cluster import run_plan_on_cluster

                job.outputs = run_plan_on_cluster(job.spec.task, job.plan, job.cluster, job.block_size, progress,
                                                  job.cancel_requested.is_set, on_dashboard,
                                                  on_report=lambda report: setattr(job, "report", report))
            else:
                job.outputs = run_plan(job.spec.task, job.plan, progress, job.cancel_requested.is_set)
                try:
                    job.report = run_report(job.plan, time.time() - job.started)
                except Exception:
                    log.exception("job %s: no run report", job.id)
            status, error, message = "succeeded", None, "done"
            job.progress = 100.0
        except JobCancelled:
            status, error, message = "cancelled", None, "cancelled"
        except BackendError as exc:
            status, error, message = "failed", exc.message, "failed"
        except Exception as exc:  # anything else is a bug or an I/O failure; report, don't die
            log.exception("job %s failed", job.id)
            status, error, message = "failed", failure_message(exc, job.plan), "failed"
        with self._lock:
            job.status, job.error, job.message, job.finished = status, error, message, time.time()
            job.plan = None  # the plan holds the model and options: nothing a finished job needs
            self._status_changed.notify_all()
        log.info("job %s %s in %.1f s%s%s", job.id, status, job.finished - job.started, f": {error}" if error else "",
                 f" on {job.report['device']}, {job.report['megapixels_per_s']} Mpx/s" if job.report else "")
