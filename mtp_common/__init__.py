"""Code shared by the backend and training, importing neither (nor torch): numpy and pydantic only.

- `tiling`: the tile grid over a window, the tiles' cores (margins) and the blend of overlapping tiles,
  as docs/contract.md §3 describes them. The backend tiles rasters with it; training evaluates with it, so
  held-out figures are measured the way users' results are made.
- `package_schema`: the `mtp_qgis` metadata of a model package as pydantic models; training's export checks
  what it writes with it, the backend what it reads; docs/package_metadata.schema.json is generated from it.

It travels wherever `backend/` does (the plugin zip's backend_bundle/, the PYTHONPATH the plugin gives the
backend); the plugin itself does not import it.
"""
