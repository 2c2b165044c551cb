"""One set of tasks across the three programs, read from the contract (docs/contract.md): what the backend serves
and refuses, what a package may declare, what training can make, what the command line, the plugin's algorithms,
its dock and its model cards offer."""
import os
import re
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

CONTRACT = Path(__file__).resolve().parent.parent / "docs" / "contract.md"


def contract_tasks():
    """(job tasks, package tasks served now, package tasks declared for later) as docs/contract.md lists them:
    the first column of §3's per-task table, and §1's "`task` is one of ... (served now)[, later ...]"."""
    text = CONTRACT.read_text(encoding="utf-8")
    section3 = text[text.index("## 3. Per-task rules"):]
    table = section3[section3.index("| task | `inputs` |"):]
    table = table[:table.index("\n\n")]
    jobs = re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE)
    sentence = re.search(r"- `task` is one of (.+?) \(served now\)(?:, later (.+?))?\.", text, re.DOTALL)
    served, later = (re.findall(r"`(\w+)`", part or "") for part in sentence.groups())
    return jobs, served, later


def test_the_contract_lists_the_tasks():
    jobs, served, later = contract_tasks()
    assert len(jobs) == len(set(jobs)) >= 8 and "semantic_segmentation" in jobs and "finetune" in jobs
    assert set(served) < set(jobs)  # every task a package can do is a job; spectral_indices and finetune run none
    assert served and not set(later) & set(jobs)  # `later`: tasks declared before any job serves them (may be none)


def test_the_backend_table_serves_the_contracts_tasks():
    from backend.cli import build_parser
    from backend.model_package import known_tasks, task_graphs
    from backend.tasks import CLUSTER_TASKS, MODEL_FREE_TASKS, SUPPORTED_TASKS, TASKS

    jobs, served, later = contract_tasks()
    assert list(SUPPORTED_TASKS) == jobs  # same order: the API lists them so
    assert set(task_graphs()) == set(served)
    assert set(known_tasks()) == set(served) | set(later)
    assert {t for t, spec in TASKS.items() if spec.model_tasks == (t,)} == set(served)
    assert set(TASKS["finetune"].model_tasks) <= set(served) and MODEL_FREE_TASKS == ("spectral_indices",)
    assert set(CLUSTER_TASKS) < set(served)
    run = next(a for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions if a.dest == "task")
    assert set(run.choices) == set(jobs) - {"finetune"}  # finetune is a job of the HTTP API only


def test_training_makes_a_package_for_every_task_the_contract_serves():
    from training.tasks import tasks

    _, served, _ = contract_tasks()
    table = tasks()
    assert all(name == task.name for name, task in table.items())
    assert {name for name, task in table.items() if task.makes_package} == set(served)
    # GeRSP pretraining makes an encoder, no package: the only task that says so
    assert [name for name, task in table.items() if not task.makes_package] == ["gersp_pretrain"]
    # every package task's code is there and whole (imported the first time a task is used)
    assert all(task.code().package is not None for task in table.values() if task.makes_package)


def test_the_plugin_offers_the_contracts_tasks():
    from backend.tasks import CLUSTER_TASKS
    from mtp_qgis import model_store
    from mtp_qgis.algorithms import ALGORITHMS, algorithm_id
    from mtp_qgis.dock import RESULT_KINDS
    from mtp_qgis.dock import TASKS as DOCK_TASKS
    from mtp_qgis.models_panel import task_name
    from mtp_qgis.provider import MtpProvider

    jobs, served, later = contract_tasks()
    algorithms = [cls() for cls in ALGORITHMS]
    assert sorted(a.TASK for a in algorithms) == sorted(jobs)  # one algorithm per task
    assert len({a.name() for a in algorithms}) == len(algorithms)
    assert set(DOCK_TASKS) == set(RESULT_KINDS) == set(served)  # the Run tab: every task that runs a package
    assert {algorithm for algorithm, _ in DOCK_TASKS.values()} == {algorithm_id(type(a)) for a in algorithms
                                                                   if a.TASK in served}
    # the plugin sends its cluster setting only where the backend's blocks can run
    assert {a.TASK for a in algorithms if a.RUNS_ON_CLUSTER} == set(CLUSTER_TASKS)
    assert {a.TASK for a in algorithms if not a.NEEDS_MODEL} == {"spectral_indices"}
    assert set(model_store.TASKS) == set(model_store.HEADLINE_METRICS) == set(served) | set(later)
    assert all(task_name(t) != t for t in model_store.TASKS)  # every task has a name for the analyst
    assert MtpProvider().id() == "mtp"
