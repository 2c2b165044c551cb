# mtp_qgis — every command sets up what it needs first (Debian packages + .venv), see scripts/setup.sh.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data
export QT_QPA_PLATFORM ?= offscreen
export PYTHONDONTWRITEBYTECODE := 1

DEFAULT_MODEL := resources/models/mtp_seg_default.onnx
SAMPLE := resources/samples/aerial_3857.tif
VERSION := $(shell sed -n 's/^version=//p' metadata.txt)

.PHONY: setup test demo default-model sample-data package bench clean

setup:
	@bash scripts/setup.sh

## The README's test command: the whole suite on real QGIS, the real backend and real data.
test: setup
	$(PY) -m pytest

## The README's main job: segment the bundled sample with the bundled model through qgis_process.
demo: setup
	@bash scripts/demo.sh $(SAMPLE) build/demo/aerial_3857_segmentation.tif

## Retrain and export the bundled default segmentation model (about 15 minutes on 2 CPU cores).
default-model: setup
	$(PY) -m training train --config training/configs/seg_default.yaml --work-dir runs/seg_default
	$(PY) -m training export --checkpoint runs/seg_default/latest.pt --out $(DEFAULT_MODEL)

## Re-derive the bundled sample raster from the shared real imagery.
sample-data: setup
	@# A byte-for-byte copy of the real 0.6 m aerial COG (EPSG:3857, JPEG + internal mask, 290 KB).
	install -m 644 $(DATA)/aerial_geotiff/cogeo.tif $(SAMPLE)

## The zip that QGIS's "Install from ZIP" and a plugin repository accept.
package: setup
	$(PY) scripts/package.py --out dist/mtp_qgis-$(VERSION).zip

bench: setup
	$(PY) benchmarks/bench_segmentation.py

clean:
	rm -rf build dist .pytest_cache
