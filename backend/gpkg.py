"""GeoPackage result layers (change polygons, scene grids, detections, instances)."""

from __future__ import annotations

from pathlib import Path

from osgeo import ogr, osr

from backend import outputs

ogr.UseExceptions()


def create_layer(path: Path, name: str, srs: osr.SpatialReference | None,
                 fields: list[tuple[str, int]], geometry: int = ogr.wkbPolygon) -> tuple[ogr.DataSource, ogr.Layer]:
    """A new GeoPackage at path with one polygon layer (geometry: its OGR type). Without a CRS (a raster in QGIS's pixel convention)
    the layer points at the GeoPackage's "undefined Cartesian" SRS (srs_id -1): GDAL would otherwise pick
    "undefined geographic" (0), and QGIS would read pixel coordinates as degrees."""
    driver = ogr.GetDriverByName("GPKG")
    try:
        ds = driver.CreateDataSource(str(path))
        layer = ds.CreateLayer(name, srs, geometry, options=["GEOMETRY_NAME=geom", "FID=fid"])
        for field_name, kind in fields:
            layer.CreateField(ogr.FieldDefn(field_name, kind))
        if srs is None:
            for table in ("gpkg_geometry_columns", "gpkg_contents"):
                ds.ExecuteSQL(f"UPDATE {table} SET srs_id = -1 WHERE table_name = '{name}'")
            # Reopen so that GDAL writes geometries with the srs_id now in the tables.
            layer = ds = None
            ds = ogr.Open(str(path), update=1)
            layer = ds.GetLayerByName(name)
    except RuntimeError as exc:
        raise outputs.creation_error(exc, path) from exc
    return ds, layer


def remove_gpkg(path: Path) -> None:
    """Remove a (partial) GeoPackage and the SQLite files that may sit beside it."""
    for p in (path, *(path.with_name(path.name + s) for s in ("-journal", "-wal", "-shm"))):
        p.unlink(missing_ok=True)
