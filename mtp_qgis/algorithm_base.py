"""What every MTP Processing algorithm shares: find the backend, check the model, turn layers and an
extent into a job request, submit it, follow its progress, cancel it, and tidy up after a failure.

The concrete algorithms (segment.py, change.py, scenes.py) only declare their parameters and say
which inputs, outputs and options their job has.
"""
import glob
import os
import time
import uuid
from pathlib import Path

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterExtent,
    QgsProcessingParameterString,
    QgsProcessingUtils,
)
from qgis.PyQt.QtGui import QIcon

from . import rendering, settings
from .backend_process import BACKEND
from .client import BackendError, BackendUnreachable
from .i18n import tr

ICON_PATH = str(Path(__file__).resolve().parent / "icons" / "mtp.svg")
POLL_INTERVAL_S = 0.25
CANCEL_WAIT_S = 30.0
LOST_BACKEND_RETRIES = 3
RASTER_SUFFIXES = (".tif", ".tiff")
GSD_TOLERANCE = 2.0  # input and model pixel sizes further apart than this (either way) get a warning
VECTOR_SUFFIXES = (".gpkg",)


def remove_partials(output_path, job_id):
    """Remove `<dir>/.<name>.<job id>.partial*` left by job `job_id` (its backend disappeared, or it was
    cancelled): only this job's, never those of another job writing the same output."""
    out = Path(output_path)
    job = glob.escape(job_id)
    patterns = {f".{glob.escape(out.stem)}.{job}.partial*", f".{glob.escape(out.name)}.{job}.partial*"}
    for pattern in patterns:
        for leftover in glob.glob(os.path.join(glob.escape(str(out.parent)), pattern)):
            try:
                os.remove(leftover)
            except OSError:
                pass


def job_summary(job):
    """Where a finished job ran and how fast, in words ("" when the backend did not say)."""
    device, speed = job.get("device"), job.get("megapixels_per_s")
    if not device:
        return ""
    if speed is None:
        return tr("Ran on {device}.").format(device=device)
    return tr("Ran on {device}, {speed:.1f} Mpx/s.").format(device=device, speed=float(speed))


def gsd_warning(layer_name, layer_gsd, model_id, model_gsd):
    """The one warning for an input whose pixel size is far from the model's (shared with the dock)."""
    return tr("'{layer}' has {gsd:.3g} m pixels but {model} was trained at {model_gsd:.3g} m/pixel "
              "({times:.1f}x {way}): results will likely be poor. Resample to the model's resolution "
              "(option RESAMPLE / the dock's check box), or use a model made for this resolution.").format(
        layer=layer_name, gsd=layer_gsd, model=model_id or tr("the model"), model_gsd=model_gsd,
        times=max(layer_gsd / model_gsd, model_gsd / layer_gsd),
        way=tr("finer") if layer_gsd < model_gsd else tr("coarser"))


def crs_string(crs):
    """authid when there is one (short, what GDAL likes), else WKT, else '' for 'no CRS'."""
    if not crs.isValid():
        return ""
    return crs.authid() or crs.toWkt(QgsCoordinateReferenceSystem.WktVariant.WKT_PREFERRED)


def extent_dict(rect, crs):
    return {"xmin": rect.xMinimum(), "ymin": rect.yMinimum(), "xmax": rect.xMaximum(),
            "ymax": rect.yMaximum(), "crs": crs_string(crs)}


class BackendAlgorithm(QgsProcessingAlgorithm):
    """Base of the mtp:* algorithms. Subclasses set TASK, DEFAULT_MODEL, implement label() and
    initAlgorithm, build_job and style_outputs."""

    EXTENT = "EXTENT"
    MODEL = "MODEL"
    RESAMPLE = "RESAMPLE"
    OUTPUT = "OUTPUT"

    TASK = ""            # backend task name, e.g. "semantic_segmentation"
    DEFAULT_MODEL = ""
    NEEDS_MODEL = True   # False: the task runs no model (spectral_indices), the request's model is empty
    RUNS_ON_CLUSTER = True  # False: the backend runs the task only on its own machine (the cluster setting is ignored)
    DOCK_RESULT = ""     # the word in the dock's result file names; "": no entry in the dock's Run tab

    def label(self):
        """What the analyst reads in messages, e.g. "Segmentation"."""
        raise NotImplementedError

    def icon(self):
        return QIcon(ICON_PATH)

    def task_help(self):
        """What the algorithm does and what its parameters mean (each algorithm says it)."""
        return ""

    def shortHelpString(self):  # noqa: N802
        return self.task_help() + self.installed_models_help()

    def installed_models_help(self):
        """The models of this task in the user's models folder (where the model manager and
        `python -m training import-official` put them), by id with name, dataset, encoder and figure."""
        from . import model_store, settings
        folders = [settings.user_models_dir()] + ([settings.models_dir()] if settings.models_dir() else [])
        lines = []
        for folder in folders:
            for item in model_store.installed_models(folder):
                meta = item.get("meta") or {}
                if meta.get("task") != self.TASK:
                    continue
                metric = model_store.headline_metric(meta)
                details = [meta.get("dataset"), meta.get("encoder"),
                           f"{metric['name']} {metric['value']:.3f}" if metric else None]
                details = ", ".join(str(d) for d in details if d)
                lines.append(f"- {item['id']}: {meta.get('name', item['id'])}" + (f" ({details})" if details else ""))
        if not lines:
            return ""
        return "\n\n" + tr("Installed models for MODEL:") + "\n" + "\n".join(lines)

    def createInstance(self):  # noqa: N802
        return type(self)()

    # --- parameters shared by all algorithms ----------------------------------------------------

    def add_extent_parameter(self):
        self.addParameter(
            QgsProcessingParameterExtent(self.EXTENT, tr("Extent (leave empty for the whole raster)"), optional=True)
        )

    def add_model_parameter(self, resample=True):
        """MODEL, and RESAMPLE: whether inputs whose pixel size differs from the model's by more than 2x are
        resampled to the model's ground sample distance first (not for algorithms that read bands themselves)."""
        self.addParameter(QgsProcessingParameterString(self.MODEL, tr("Model id"), defaultValue=self.DEFAULT_MODEL))
        if not resample:
            return
        self.addParameter(QgsProcessingParameterBoolean(
            self.RESAMPLE, tr("Resample inputs to the model's resolution when it differs by more than 2x"),
            defaultValue=False, optional=True))

    def raster_layer(self, parameters, name, context):
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None or not layer.isValid():
            raise QgsProcessingException(self.invalidRasterError(parameters, name))
        return layer

    def output_path(self, parameters, name, context, suffixes, what):
        """Absolute path of a file destination, its folder created; '' for a skipped optional output."""
        output = self.parameterAsOutputLayer(parameters, name, context)
        if not output:
            return ""
        if output.startswith(("memory:", "ogr:", "postgres:", "spatialite:")) or "|" in output:
            raise QgsProcessingException(
                tr("{what} must be written to a file of its own ({formats}; 'Save to File…'), not '{output}': the "
                   "backend writes the whole file.").format(what=what, formats=" / ".join(suffixes), output=output))
        output = os.path.abspath(output)
        if Path(output).suffix.lower() not in suffixes:
            raise QgsProcessingException(tr("{what} must be a {formats} file, not '{output}'.").format(
                what=what, formats=" / ".join(suffixes), output=output))
        os.makedirs(os.path.dirname(output), exist_ok=True)
        return output

    def model_id(self, parameters, context):
        if not self.NEEDS_MODEL:
            return ""
        return (self.parameterAsString(parameters, self.MODEL, context) or self.DEFAULT_MODEL).strip()

    # --- backend and model --------------------------------------------------------------------------

    def connect(self, model_id, feedback):
        """(client, model info). A model of another task is refused by the backend when the job is
        submitted; its message (which names both tasks) reaches the analyst unchanged."""
        try:
            client = BACKEND.client()
            if not self.NEEDS_MODEL:
                feedback.pushInfo(tr("Backend {backend}").format(backend=BACKEND.describe(client.url)))
                return client, {}
            model = client.model(model_id)
        except BackendError as exc:
            raise QgsProcessingException(str(exc)) from exc
        feedback.pushInfo(tr("Backend {backend}, model {model} ({name})").format(
            backend=BACKEND.describe(client.url), model=model_id, name=model.get("name", "")))
        return client, model

    # --- extent and inputs ----------------------------------------------------------------------------

    def requested_extent(self, parameters, context, layer):
        """(QgsRectangle, QgsCoordinateReferenceSystem) or (None, None) when no extent was given."""
        if parameters.get(self.EXTENT) in (None, ""):
            return None, None
        rect = self.parameterAsExtent(parameters, self.EXTENT, context)
        if rect is None or rect.isNull() or rect.isEmpty():
            return None, None
        crs = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
        if not crs.isValid() or not layer.crs().isValid():
            # No CRS on one side: the numbers are taken in the raster's own (QGIS-displayed) coordinates.
            crs = layer.crs()
        return rect, crs

    def input_for_backend(self, layer, rect, crs, model, context, feedback, temporaries):
        """(path, extent dict or None) for the job request. A layer that is not a local GDAL file, or one
        the analyst asked to resample to the model's resolution, is rendered to a temporary GeoTIFF at the
        model's ground sample distance (appended to `temporaries`) covering `rect` (or the layer)."""
        model_gsd = float(model.get("gsd_m") or 0.0)
        mismatch = rendering.gsd_mismatch(layer, model_gsd, GSD_TOLERANCE)
        resample = bool(mismatch) and getattr(self, "resample", False)
        if mismatch and not resample:
            feedback.pushWarning(gsd_warning(layer.name(), mismatch[0], model.get("id", ""), model_gsd))
        path = rendering.local_file_path(layer)
        if path and not resample:
            return path, (extent_dict(rect, crs) if rect is not None else None)
        render_extent = layer.extent()
        if rect is not None:
            if crs.isValid() and layer.crs().isValid() and crs != layer.crs():
                transform = QgsCoordinateTransform(crs, layer.crs(), context.transformContext())
                rect = transform.transformBoundingBox(rect)
            render_extent = rect.intersect(layer.extent())
            if render_extent.isEmpty():
                raise QgsProcessingException(
                    tr("The extent does not intersect the layer '{layer}'.").format(layer=layer.name()))
        temporary = os.path.join(QgsProcessingUtils.tempFolder(), f"mtp_input_{uuid.uuid4().hex}.tif")
        if resample:
            feedback.pushInfo(tr("Resampling '{layer}' from {gsd:.3g} m to the model's {model_gsd:.3g} m/pixel "
                                 "({path})").format(layer=layer.name(), gsd=mismatch[0], model_gsd=model_gsd,
                                                    path=temporary))
        else:
            feedback.pushInfo(tr("Layer '{layer}' is not a local GDAL file (provider {provider}); rendering it at "
                                 "{gsd} m/pixel to {path}").format(layer=layer.name(), provider=layer.providerType(),
                                                                   gsd=model_gsd, path=temporary))
        temporaries.append(temporary)
        try:
            rendering.render_to_geotiff(layer, render_extent, model_gsd, temporary, context.transformContext())
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from exc
        return temporary, None

    # --- the job --------------------------------------------------------------------------------------

    def prepare(self, parameters, context):
        """Checks that need no backend (layers valid, output formats); returns what build_job needs."""
        raise NotImplementedError

    def build_job(self, prepared, parameters, context, feedback, model, temporaries):
        """(request without task/model, {result name: (backend output key, path or '')})."""
        raise NotImplementedError

    def style_outputs(self, outputs, model, context, feedback):
        """Write .qml styles and register post-processors — implemented by each algorithm."""

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        model_id = self.model_id(parameters, context)
        self.resample = self.parameterAsBoolean(parameters, self.RESAMPLE, context)
        # Parameters first (cheap, and a bad layer should not need a backend), then the backend.
        prepared = self.prepare(parameters, context)
        client, model = self.connect(model_id, feedback)
        temporaries = []
        try:
            request, results = self.build_job(prepared, parameters, context, feedback, model, temporaries)
            # Processing's semantics: the destination the user chose is replaced (its file dialog asked). The
            # backend still never replaces anything but a regular file that is not an input, model or token.
            request = dict(request, task=self.TASK, model=model_id, overwrite=True)
            cluster = settings.cluster_address() if self.RUNS_ON_CLUSTER else ""
            if cluster:  # the backend sends the job's blocks to this Dask cluster
                request["options"] = dict(request.get("options") or {}, cluster=cluster)
                feedback.pushInfo(tr("Running on the Dask cluster {address}").format(address=cluster))
            output_files = list(request["outputs"].values())
            try:
                job = client.submit(request)
            except BackendError as exc:
                raise QgsProcessingException(str(exc)) from exc
            feedback.pushInfo(tr("Job {id} submitted").format(id=job["id"]))
            job = self.wait_for_job(client, job, output_files, feedback)
        finally:
            for temporary in temporaries:
                if os.path.exists(temporary):
                    os.remove(temporary)
        written = job.get("outputs") or {}
        outputs = {name: written.get(key, path) if path else None
                   for name, (key, path) in results.items()}
        self.style_outputs(outputs, model, context, feedback)
        return outputs

    def wait_for_job(self, client, job, outputs, feedback):
        job_id = job["id"]
        last_message = None
        dashboard = None
        lost = 0
        while True:
            if feedback.isCanceled():
                self.cancel_job(client, job_id, outputs, feedback)
                raise QgsProcessingException(tr("{task} cancelled; no output was written.").format(task=self.label()))
            try:
                # A long-poll: the backend answers when the job's status changes (it ends) or after
                # POLL_INTERVAL_S with its progress; no sleep between requests, no delay at the end.
                started = time.monotonic()
                job = client.job(job_id, wait=POLL_INTERVAL_S, status=job.get("status"))
                lost = 0
            except BackendUnreachable as exc:
                lost += 1
                if lost < LOST_BACKEND_RETRIES:
                    time.sleep(POLL_INTERVAL_S * 2)
                    continue
                for output in outputs:
                    remove_partials(output, job_id)
                raise QgsProcessingException(
                    tr("The MTP backend stopped while running job {id}; the partial output was removed. Run the "
                       "algorithm again (the plugin restarts the backend). Details: {details}").format(
                        id=job_id, details=exc)
                ) from exc
            except BackendError as exc:
                raise QgsProcessingException(str(exc)) from exc
            feedback.setProgress(float(job.get("progress") or 0.0))
            if job.get("dashboard") and job["dashboard"] != dashboard:
                dashboard = job["dashboard"]
                feedback.pushInfo(tr("Dask dashboard: {link}").format(link=dashboard))
                if hasattr(feedback, "dashboard"):  # the dock shows it as a link
                    feedback.dashboard.emit(dashboard)
            message = job.get("message")
            if message and message != last_message:
                feedback.pushInfo(message)
                last_message = message
            status = job.get("status")
            if status == "succeeded":
                summary = job_summary(job)
                if summary:
                    feedback.pushInfo(summary)
                    report = getattr(feedback, "report_job", None)  # the dock's feedback shows it in its status line
                    if callable(report):
                        report(summary)
                return job
            if status == "failed":
                reason = job.get("error") or tr("no reason given")
                raise QgsProcessingException(tr("{task} failed in the backend: {reason}").format(
                    task=self.label(), reason=reason))
            if status == "cancelled":
                raise QgsProcessingException(
                    tr("The {task} job was cancelled in the backend; no output was written.").format(
                        task=self.label().lower()))
            # A backend without long-poll answers at once: keep the old pace against it.
            time.sleep(max(0.0, POLL_INTERVAL_S - (time.monotonic() - started)))

    def cancel_job(self, client, job_id, outputs, feedback):
        feedback.pushInfo(tr("Cancelling job {id}...").format(id=job_id))
        status = None
        try:
            client.cancel(job_id)
            deadline = time.monotonic() + CANCEL_WAIT_S
            while time.monotonic() < deadline:
                status = client.job(job_id).get("status")
                if status in ("cancelled", "failed", "succeeded"):
                    break
                time.sleep(POLL_INTERVAL_S)
        except BackendError:
            pass  # the backend is gone: nothing left to stop, only files to tidy
        for output in outputs:
            remove_partials(output, job_id)
            if status == "succeeded" and os.path.exists(output):
                os.remove(output)  # it finished as the cancel arrived; the analyst asked for no result
