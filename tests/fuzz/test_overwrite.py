"""What an output may replace (docs/contract.md §2 "Paths and results"): an existing file only with
`overwrite`, and then only a regular file that is not an input, a model or the token; never a folder, link,
device or pipe; never a file of another type. A file that appears while the job runs is left alone."""

import os
import stat
from pathlib import Path

import pytest
from osgeo import gdal

from backend.errors import BackendError, ConflictError
from backend.jobs import JobManager, JobSpec, plan_job, run_plan

gdal.UseExceptions()
TASKS = {  # task -> model, output key -> file name
    "semantic_segmentation": ("seg", {"raster": "result.tif"}),
    "change_detection": ("change", {"raster": "changes.tif", "polygons": "changes.gpkg"}),
    "scene_classification": ("scene", {"vector": "scenes.gpkg"}),
    "detection": ("det", {"vector": "detections.gpkg"}),
    "rotated_detection": ("rdet", {"vector": "detections.gpkg"}),
}
OLD = b"an earlier file that must survive"


def spec_for(task, corpus, folder, overwrite=False, **outputs):
    model, names = TASKS[task]
    base = str(corpus["clean"].path)
    paths = {k: str(folder / v) for k, v in names.items()}
    paths.update({k: str(v) for k, v in outputs.items()})
    return JobSpec(task, model, [base, base] if task == "change_detection" else [base], paths, overwrite=overwrite)


@pytest.mark.parametrize("task", list(TASKS))
def test_existing_output_needs_overwrite_then_is_replaced(fuzz_registry, corpus, tmp_path, task):
    key, name = next(iter(TASKS[task][1].items()))
    target = tmp_path / name
    target.write_bytes(OLD)
    with pytest.raises(ConflictError, match=r"already exists; set \"overwrite\": true"):
        plan_job(spec_for(task, corpus, tmp_path), fuzz_registry, "ow")
    assert target.read_bytes() == OLD and sorted(p.name for p in tmp_path.iterdir()) == [name]
    run_plan(task, plan_job(spec_for(task, corpus, tmp_path, overwrite=True), fuzz_registry, "ow"))
    assert target.read_bytes() != OLD
    assert gdal.OpenEx(str(target)) is not None  # a real result now
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def never_replaced(tmp_path, fuzz_models_dir, corpus):
    """name -> (path, fragment of the refusal): things no output may replace, overwrite or not."""
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    token_tif = tmp_path / "token.tif"  # a token file that happens to have a result's extension
    token_tif.write_text("secret-token\n")
    bashrc = tmp_path / ".bashrc"
    bashrc.write_text("alias ls='ls --color'\n")
    folder = tmp_path / "folder.tif"
    folder.mkdir()
    link = tmp_path / "link.tif"
    link.symlink_to(bashrc)
    dangling = tmp_path / "dangling.tif"
    dangling.symlink_to(tmp_path / "nowhere.tif")
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    model_link = tmp_path / "model.tif"
    os.link(fuzz_models_dir / "seg.onnx", model_link)  # another name of a model package
    cases = {
        "a dotfile": (bashrc, "must be a .tif or .tiff file"),
        "a model package": (fuzz_models_dir / "seg.onnx", "must be a .tif or .tiff file"),
        "another name of a model package": (model_link, "is a model package"),
        "the token file": (token, "must be a .tif or .tiff file"),
        "the token file, named .tif": (token_tif, "is the backend's token file"),
        "a folder": (folder, "is a folder"),
        "a symbolic link": (link, "is a symbolic link"),
        "a dangling symbolic link": (dangling, "is a symbolic link"),
        "a pipe": (fifo, "is not a regular file"),
        "the input": (corpus["clean"].path, "is the input raster"),
        "a device": (Path("/dev/null"), "must be a .tif or .tiff file"),
    }
    try:
        device = tmp_path / "device.tif"
        os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # a second /dev/null
        cases["a device node named .tif"] = (device, "is not a regular file")
    except (PermissionError, OSError):
        pass  # not root: the pipe stands for special files
    return cases, token_tif


def snapshot(path):
    st = os.lstat(path)
    content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
    return stat.S_IFMT(st.st_mode), st.st_ino, content


def test_files_that_are_never_replaced_even_with_overwrite(fuzz_registry, fuzz_models_dir, corpus, tmp_path):
    cases, token_tif = never_replaced(tmp_path, fuzz_models_dir, corpus)
    manager = JobManager(fuzz_registry, protected={token_tif: "the backend's token file"})
    try:
        for what, (target, fragment) in cases.items():
            before = snapshot(target)
            spec = spec_for("semantic_segmentation", corpus, tmp_path, overwrite=True, raster=target)
            with pytest.raises(BackendError) as err:
                manager.submit(spec)
            assert fragment in err.value.message and err.value.status_code == 400, (what, err.value.message)
            assert snapshot(target) == before, what
    finally:
        manager.shutdown()
    assert manager.list() == []


def test_a_file_that_appears_while_the_job_runs_is_left_alone(fuzz_registry, corpus, tmp_path):
    plan = plan_job(spec_for("semantic_segmentation", corpus, tmp_path), fuzz_registry, "race")
    (tmp_path / "result.tif").write_bytes(OLD)  # another program got there first
    with pytest.raises(ConflictError, match="appeared while the job ran"):
        run_plan("semantic_segmentation", plan)
    assert (tmp_path / "result.tif").read_bytes() == OLD and [p.name for p in tmp_path.iterdir()] == ["result.tif"]


def test_change_outputs_are_committed_both_or_neither(fuzz_registry, corpus, tmp_path):
    plan = plan_job(spec_for("change_detection", corpus, tmp_path), fuzz_registry, "pair")
    (tmp_path / "changes.tif").write_bytes(OLD)  # only the raster's name is taken meanwhile
    with pytest.raises(ConflictError):
        run_plan("change_detection", plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["changes.tif"]  # no lone polygons
    assert (tmp_path / "changes.tif").read_bytes() == OLD
