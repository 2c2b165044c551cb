# mtp_qgis — every command sets up what it needs first (Debian packages + .venv), see scripts/setup.sh.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data
export QT_QPA_PLATFORM ?= offscreen
export PYTHONDONTWRITEBYTECODE := 1
# Idle OpenMP threads sleep instead of spinning, so torch in tests and training does not starve the
# backend, qgis_process or other jobs sharing the cores.
export OMP_WAIT_POLICY ?= PASSIVE

DEFAULT_MODEL := resources/models/mtp_seg_default.onnx
CHANGE_MODEL := resources/models/mtp_change_default.onnx
SCENE_MODEL := resources/models/mtp_scene_default.onnx
DET_MODEL := resources/models/mtp_det_default.onnx
RDET_MODEL := resources/models/mtp_rdet_default.onnx
LANDCOVER_MODEL := resources/models/mtp_landcover_default.onnx
INST_MODEL := resources/models/mtp_inst_default.onnx
S2_SAMPLE := resources/samples/sentinel2_l1c_slovenia.tif
# The change and scene models finetune the encoder of the segmentation model (the MTP recipe in small).
SEG_CHECKPOINT := runs/seg_default/latest.pt
SAMPLE := resources/samples/aerial_3857.tif

.PHONY: setup test test-fast lint schema check-qt6 demo tiny-chain default-model change-model scene-model det-model rdet-model landcover-model inst-model default-models sample-data package bench reference-env reference reference-detection clean

setup:
	@bash scripts/setup.sh

## The README's test command: the whole suite on real QGIS, the real backend and real data.
test: setup
	$(PY) -m pytest

## The edit-test loop: everything but the tests marked `slow` (pytest.ini), in under 3 minutes on 2 cores.
test-fast: setup
	$(PY) -m pytest -m "not slow"

## ruff (rules in pyproject.toml) over the whole repository, then mypy on backend/, training/ and the plugin.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## The plugin's code against the rules of QGIS's PyQt5 -> PyQt6 migration script (also part of `make test`).
check-qt6: setup
	$(PY) scripts/check_qt6.py mtp_qgis

## The README's main job: segment the bundled sample with the bundled model through qgis_process.
demo: setup
	@bash scripts/demo.sh $(SAMPLE) build/demo/aerial_3857_segmentation.tif

## Retrain and export the bundled default segmentation model (about 15 minutes on 2 CPU cores).
default-model: setup
	$(PY) -m training train --config training/configs/seg_default.yaml --work-dir runs/seg_default
	$(PY) -m training export --checkpoint runs/seg_default/latest.pt --out $(DEFAULT_MODEL)

$(SEG_CHECKPOINT):
	$(MAKE) default-model

## Retrain and export the bundled change-detection model on LEVIR-CD pairs (about 13 minutes on 2 cores).
change-model: setup $(SEG_CHECKPOINT)
	$(PY) -m training train --config training/configs/change_default.yaml --work-dir runs/change_default
	$(PY) -m training export --checkpoint runs/change_default/latest.pt --out $(CHANGE_MODEL)

## Retrain and export the bundled scene classifier on LoveDA chips (about 4 minutes on 2 cores).
scene-model: setup $(SEG_CHECKPOINT)
	$(PY) -m training train --config training/configs/scene_default.yaml --work-dir runs/scene_default
	$(PY) -m training export --checkpoint runs/scene_default/latest.pt --out $(SCENE_MODEL)

## Retrain and export the bundled ship detectors on DOTA P0706 (about 10 minutes of one core each;
## `make -j2 det-model rdet-model` runs the two side by side).
det-model: setup $(SEG_CHECKPOINT)
	$(PY) -m training train --config training/configs/det_default.yaml --work-dir runs/det_default
	$(PY) -m training export --checkpoint runs/det_default/latest.pt --out $(DET_MODEL)

rdet-model: setup $(SEG_CHECKPOINT)
	$(PY) -m training train --config training/configs/rdet_default.yaml --work-dir runs/rdet_default
	$(PY) -m training export --checkpoint runs/rdet_default/latest.pt --out $(RDET_MODEL)

## Retrain and export the bundled ship instance segmentation (Mask R-CNN) on DOTA P0706, the ship detectors' split;
## its held-out mask AP is compared with the bundled horizontal-box detector's boxes (~13 minutes on 2 cores).
inst-model: setup $(SEG_CHECKPOINT) $(DET_MODEL)
	$(PY) -m training train --config training/configs/inst_default.yaml --work-dir runs/inst_default
	$(PY) -m training export --checkpoint runs/inst_default/latest.pt --out $(INST_MODEL)

## GeRSP -> MTP -> finetune (each under torchrun, 2 CPU processes) -> export -> backend, at toy size (~3 minutes).
tiny-chain: setup
	$(PY) -m training.tiny_chain runs/tiny_chain

## Retrain the multispectral land-cover model (bands + NDVI/NDWI channels) and its two baselines on the same held-out
## pixels (the same network on the bands only, index thresholds alone): runs/landcover/comparison.md is the README's
## table. Then export the model with index channels (about 6 minutes on 2 cores; finished runs are reused).
landcover-model: setup
	$(PY) -m training.land_cover.compare --config training/configs/landcover_default.yaml --work-dir runs/landcover
	$(PY) -m training export --checkpoint runs/landcover/with_indices/latest.pt --out $(LANDCOVER_MODEL)

## All bundled models, from scratch.
default-models: default-model change-model scene-model det-model rdet-model landcover-model inst-model

## Re-derive the bundled sample raster from the shared real imagery.
sample-data: setup
	@# A byte-for-byte copy of the real 0.6 m aerial COG (EPSG:3857, JPEG + internal mask, 290 KB).
	install -m 644 $(DATA)/aerial_geotiff/cogeo.tif $(SAMPLE)
	@# A real Sentinel-2 L1C scene (13 named bands, uint16 DN, EPSG:32633, 93 KB) from sentinel2_eolearn.
	$(PY) scripts/sentinel2_sample.py $(S2_SAMPLE)

## docs/package_metadata.schema.json: the JSON Schema of a model package's metadata, generated from
## mtp_common/package_schema.py (tests/test_package_schema.py fails while the committed file is out of date).
schema: setup
	$(PY) -m mtp_common.package_schema --write

## dist/: the plugin zip (passes plugins.qgis.org's rules), plugins.xml (a custom plugin repository) and
## models/index.json with the models beside it. BASE_URL: where dist/ will be served (default: file://).
BASE_URL ?=
package: setup
	$(PY) scripts/package.py --dist dist $(if $(BASE_URL),--base-url $(BASE_URL))

## The performance tables (issue 6) in benchmarks/results/: overhead vs bare ONNX Runtime and FLOP/s, then
## throughput and peak memory to 32k², int8 vs fp32, start to result (about two hours on 2 cores with the official
## models below). A quick look at smaller sizes:
## `make bench BENCH_SIZES="1024 2048" BENCH_REPEATS=1`.
BENCH_REPEATS ?= 5
BENCH_SIZES ?= 1024 2048 4096 8192 16384 32768
BENCH_CAPS ?= change_detection=16384 detection=16384 rotated_detection=16384 instance_segmentation=8192
## BENCH_OFFICIAL: official MTP architectures (config names) packaged through import-official (random
## weights in the official format; see benchmarks/official_package.py) and measured at BENCH_OFFICIAL_SIZES;
## empty to skip (a ViT-B+RVSA UperNet takes ~15 min at 4096² on 2 cores).
BENCH_OFFICIAL ?= rvsa-b-upernet-512-mae-mtp-loveda
BENCH_OFFICIAL_SIZES ?= 4096
## BENCH_INT8_OFFICIAL: the official architecture whose int8 speed-up the int8 table adds (empty: none).
BENCH_INT8_OFFICIAL ?= rvsa-b-upernet-512-mae-mtp-loveda
## BENCH_OFFICIAL_DET=0 skips the full-size official Oriented R-CNN row (ViT-B+RVSA, DOTA config, 1024 px
## tiles; about 15-25 minutes on 2 cores, most of it the ONNX export).
BENCH_OFFICIAL_DET ?= 1
bench: setup
	$(PY) benchmarks/bench_overhead.py --repeats $(BENCH_REPEATS) --out benchmarks/results/overhead
	$(PY) benchmarks/bench_segmentation.py --sizes $(BENCH_SIZES) --cap $(BENCH_CAPS) --out benchmarks/results/scale
	$(PY) benchmarks/bench_cluster.py --size 4096 --block-size 2048 --out benchmarks/results/cluster
	@if [ -n "$(BENCH_INT8_OFFICIAL)" ]; then \
	  $(PY) benchmarks/official_package.py $(BENCH_INT8_OFFICIAL) --out build/official && \
	  $(PY) benchmarks/bench_int8.py --out benchmarks/results/int8 \
	      --official build/official/mtp_$$(echo $(BENCH_INT8_OFFICIAL) | tr -- '-.' '__').onnx; \
	else $(PY) benchmarks/bench_int8.py --out benchmarks/results/int8; fi
	$(PY) benchmarks/bench_start_to_result.py --out benchmarks/results/start_to_result
	@for name in $(BENCH_OFFICIAL); do \
	  $(PY) benchmarks/official_package.py $$name --out build/official && \
	  $(PY) benchmarks/bench_segmentation.py --tasks semantic_segmentation --model mtp_$$(echo $$name | tr -- '-.' '__') \
	      --models-dir build/official --sizes $(BENCH_OFFICIAL_SIZES) --out benchmarks/results/official_$$name || exit 1; \
	done
	@if [ "$(BENCH_OFFICIAL_DET)" = "1" ]; then \
	  $(PY) benchmarks/bench_official_detection.py --out benchmarks/results/official_detection; fi

## Optional reference environment: the official OpenMMLab frameworks (mmseg, mmpretrain, mmdet, pure-Python
## mmcv-lite) in .venv-ref, apart from .venv (they bring numpy 2.x). Never used by the backend or the plugin.
REF_VENV ?= .venv-ref
reference-env:
	@[ -x $(REF_VENV)/bin/python ] || /usr/bin/python3 -m venv $(REF_VENV)
	$(REF_VENV)/bin/pip install -q --disable-pip-version-check -r requirements/reference.txt

## Rebuild tests/fixtures/official from the official MTP code and prove training/official against it
## (reduced-width models of every family; full-size parity for REFERENCE_FULL). The official sources are
## not part of this repository: clone them and name the folders,
##   make reference MTP_REPO=../MTP OPENCD_REPO=../open-cd
## (github.com/ViTAE-Transformer/MTP, github.com/likyoo/open-cd).
## The detectors (mmdet, mmrotate 1.x from its source: branch 1.x of open-mmlab/mmrotate) are written by
##   make reference-detection MTP_REPO=../MTP OPENCD_REPO=../open-cd MMROTATE_REPO=../mmrotate
## which leaves the other fixtures (and their random weights) as they are.
REFERENCE_FULL ?= rvsa-b-upernet-512-mae-mtp-loveda vit-rvsa-b-224-mae-mtp_eurosat rvsa-b-unet-256-mae-mtp_levir
reference: setup reference-env
	@[ -d "$(MTP_REPO)/RS_Tasks_Finetune" ] && [ -d "$(OPENCD_REPO)/opencd" ] || { \
	  echo "make reference MTP_REPO=<clone of ViTAE-Transformer/MTP> OPENCD_REPO=<clone of likyoo/open-cd>" >&2; exit 2; }
	$(REF_VENV)/bin/python reference/official_reference.py --mtp-repo $(MTP_REPO) --opencd-repo $(OPENCD_REPO) \
	    --full $(REFERENCE_FULL)

reference-detection: setup reference-env
	@[ -d "$(MTP_REPO)/RS_Tasks_Finetune" ] && [ -d "$(MMROTATE_REPO)/mmrotate/models" ] || { \
	  echo "make reference-detection MTP_REPO=<clone of ViTAE-Transformer/MTP> OPENCD_REPO=<clone of likyoo/open-cd> MMROTATE_REPO=<open-mmlab/mmrotate at branch 1.x>" >&2; exit 2; }
	$(REF_VENV)/bin/python reference/official_reference.py --mtp-repo $(MTP_REPO) --opencd-repo $(OPENCD_REPO) \
	    --mmrotate-repo $(MMROTATE_REPO) --only-detection

clean:
	rm -rf build dist .pytest_cache
