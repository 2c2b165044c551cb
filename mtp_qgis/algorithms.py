"""The plugin's task list: every Processing algorithm mtp:*, in the order the toolbox and the dock show them.

The provider registers these; the dock's Run tab offers those with a DOCK_RESULT; each algorithm's TASK is the
backend task it sends. A new task is its algorithm class and one line here (docs/adding_a_task.md)."""
from .change import ChangeAlgorithm
from .detect import DetectAlgorithm, DetectRotatedAlgorithm
from .finetune import FinetuneAlgorithm
from .instances import SegmentInstancesAlgorithm
from .land_cover import ExtractLandCoverAlgorithm, SpectralIndicesAlgorithm
from .scenes import ClassifyScenesAlgorithm
from .segment import SegmentAlgorithm

ALGORITHMS = (SegmentAlgorithm, ChangeAlgorithm, ClassifyScenesAlgorithm, DetectAlgorithm, DetectRotatedAlgorithm,
              SegmentInstancesAlgorithm, ExtractLandCoverAlgorithm, SpectralIndicesAlgorithm, FinetuneAlgorithm)


def algorithm_id(algorithm_class):
    """"mtp:segment": the id Processing knows the algorithm by (the provider is `mtp`)."""
    return f"mtp:{algorithm_class().name()}"


def dock_algorithms():
    """task -> algorithm class, for the algorithms the dock's Run tab offers, in toolbox order."""
    return {cls.TASK: cls for cls in ALGORITHMS if cls.DOCK_RESULT}
