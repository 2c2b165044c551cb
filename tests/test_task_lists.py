"""One set of tasks across the three programs: what the backend serves and refuses, what a package may declare,
what training can make, what the command line, the plugin's algorithms, its dock and its model cards offer."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def test_every_program_knows_the_same_tasks():
    from backend.cli import build_parser
    from backend.model_package import known_tasks, task_graphs
    from backend.tasks import MODEL_FREE_TASKS, SUPPORTED_TASKS, TASKS
    from mtp_qgis import model_store
    from mtp_qgis.dock import TASKS as DOCK_TASKS
    from mtp_qgis.models_panel import task_name
    from mtp_qgis.provider import MtpProvider
    from training.tasks import TASK_MODULES

    # served tasks that run a model package (finetune makes one from a segmentation package)
    model_tasks = set(SUPPORTED_TASKS) - set(MODEL_FREE_TASKS) - {"finetune"}
    KNOWN_TASKS = known_tasks()
    assert TASKS["finetune"].model_task in model_tasks
    assert model_tasks <= set(KNOWN_TASKS) and model_tasks == set(task_graphs())
    assert set(KNOWN_TASKS) - model_tasks == {"instance_segmentation"}  # declared, not served yet
    # training makes a package for every served task; GeRSP pretraining makes an encoder, no package
    assert set(TASK_MODULES) - {"gersp_pretrain"} == model_tasks
    run = next(a for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions if a.dest == "task")
    assert set(run.choices) == set(SUPPORTED_TASKS) - {"finetune"}  # finetune is a job of the HTTP API only
    assert set(model_store.TASKS) == set(KNOWN_TASKS) and set(model_store.HEADLINE_METRICS) == set(KNOWN_TASKS)
    assert all(task_name(t) != t for t in KNOWN_TASKS)  # every task has a name for the analyst
    assert set(DOCK_TASKS) == model_tasks
    provider = MtpProvider()
    algorithms = [cls() for cls in _algorithm_classes()]
    assert {a.TASK for a in algorithms} == set(SUPPORTED_TASKS)
    from backend.tasks import CLUSTER_TASKS  # the plugin sends its cluster setting only where blocks can run
    assert {a.TASK for a in algorithms if a.RUNS_ON_CLUSTER} == set(CLUSTER_TASKS)
    assert {a.name() for a in algorithms} >= {algorithm.split(":")[1] for algorithm, _ in DOCK_TASKS.values()}
    assert provider.id() == "mtp"


def _algorithm_classes():
    from mtp_qgis.change import ChangeAlgorithm
    from mtp_qgis.detect import DetectAlgorithm, DetectRotatedAlgorithm
    from mtp_qgis.finetune import FinetuneAlgorithm
    from mtp_qgis.land_cover import ExtractLandCoverAlgorithm, SpectralIndicesAlgorithm
    from mtp_qgis.scenes import ClassifyScenesAlgorithm
    from mtp_qgis.segment import SegmentAlgorithm
    return [SegmentAlgorithm, ChangeAlgorithm, ClassifyScenesAlgorithm, DetectAlgorithm, DetectRotatedAlgorithm,
            ExtractLandCoverAlgorithm, SpectralIndicesAlgorithm, FinetuneAlgorithm]
