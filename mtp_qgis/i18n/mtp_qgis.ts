<?xml version="1.0" encoding="utf-8"?>
<!DOCTYPE TS>
<TS version="2.1">
<context>
    <name>mtp_qgis</name>
    <message>
        <location filename="../finetune_panel.py"/>
        <source> min</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source> px</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>'{id}' is not a usable model id: use letters, digits, _ . - (it becomes a file name).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>'{layer}' has {gsd:.3g} m pixels but {model} was trained at {model_gsd:.3g} m/pixel ({times:.1f}x {way}): results will likely be poor. Resample to the model's resolution (option RESAMPLE / the dock's check box), or use a model made for this resolution.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>'{layer}' is not a raster file GDAL reads (provider {provider}); spectral bands cannot be taken from a rendered image. Save it as a GeoTIFF with its bands first.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>(polygons)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>9 model pixels</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>A Dask scheduler address (tcp://host:8786), or local:N for N worker processes on this machine: jobs run there in blocks, with the same result. The workers must see the input and output paths. Remembered.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Add a model package</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Add from file…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Address of the model index (JSON); remembered</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../change.py"/>
        <source>After (later raster)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>After (later)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>After raster (change detection: the later date)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>After raster (change)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Also write change polygons (GeoPackage)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Ask the backend which models it has (starts it if needed)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Available</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Backend installed; starting it...</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>Backend {backend}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>Backend {backend}, model {model} ({name})</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Bands</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Base model</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Base model id</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../change.py"/>
        <source>Before (earlier raster)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Before (earlier)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Before and after are the same layer; choose the two dates to compare.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_panel.py"/>
        <location filename="../models_panel.py"/>
        <location filename="../run_row.py"/>
        <source>Cancel</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Cancelled; no model was written.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Cancelled; nothing was written.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>Cancelling job {id}...</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <location filename="../finetune_panel.py"/>
        <source>Cancelling...</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Cell size</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../scenes.py"/>
        <source>Cell size in input pixels (empty = the model's tile size)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../scenes.py"/>
        <source>Cells of {n} pixels</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../change.py"/>
        <source>Change</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../change.py"/>
        <location filename="../models_panel.py"/>
        <source>Change detection</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Change detection only: the later date (the raster layer above is the earlier one); draw the changes as polygons</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../change.py"/>
        <source>Change polygons</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../change.py"/>
        <source>Change polygons of at least {px} pixels ({area:.4g} CRS units²)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Change polygons smaller than this area (in the before raster's CRS units², m² for a metric CRS) are left out; the raster keeps them</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Choose a raster layer and a polygon layer of labels.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Choose a raster layer first.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Choose the after layer (the later image) first.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Choose the before layer first.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Choose the field of '{layer}' that holds each polygon's class.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Choose the field that holds each polygon's class.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <location filename="../finetune_panel.py"/>
        <source>Class field</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Classes</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../segment.py"/>
        <source>Classifies every pixel of a raster layer with a segmentation model run by the local MTP backend.

Input: any raster layer. GDAL files are read directly; web, virtual or memory layers are first rendered at the model's ground sample distance.
Extent: optional, in any CRS; the result covers it clipped to the raster.
Model: id of a segmentation model the backend knows (default {default}).
Resample: when the input's pixel size differs from the model's by more than 2x (a warning says so), render it at the model's resolution first; the result is then on that grid.
Output: GeoTIFF of class ids (255 = nodata) on the source's pixel grid, with a .qml style holding the class names and colours (semi-transparent, nodata not painted).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Cluster</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>Computes spectral indices of a multispectral raster, one float32 band each, in the local MTP backend (no model).

NDVI = (nir - red) / (nir + red); NDWI = (green - nir) / (green + nir); MNDWI = (green - swir1) / (green + swir1); NDBI = (swir1 - nir) / (swir1 + nir); BSI = ((swir1 + red) - (nir + blue)) / ((swir1 + red) + (nir + blue)), all from reflectance (the sensor's scaling).
Indices: leave empty for every index the raster's bands allow; an index whose bands the raster lacks is refused, naming the missing band.
Sensor: recognised from the band names or wavelengths GDAL reads, or chosen here.
Output: GeoTIFF, one band per index named after it, NaN where the input is nodata or the index undefined.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Contacting the backend...</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Could not list models: {reason}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Could not save '{layer}' for the backend: {error}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_process.py"/>
        <source>Could not start the MTP backend with {python}: {error}. Set the backend Python in the MTP settings (key mtp_qgis/backend_python) or $MTP_QGIS_BACKEND_PYTHON.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../scenes.py"/>
        <source>Cuts a raster layer into a grid of square cells and gives each cell one class with a scene-classification model run by the local MTP backend.

Input: any raster layer. GDAL files are read directly; web, virtual or memory layers are first rendered at the model's ground sample distance.
Extent: optional, in any CRS; the grid covers it clipped to the raster (snapped to whole pixels) exactly: cells start at its top-left corner and the last row and column are cut short, so there is no gap and no overlap.
Model: id of a scene-classification model the backend knows (default {default}).
Cell size: side of a cell in pixels of the input raster (of the rendered image for a web layer); leave empty (or 0) for the model's tile size. Each cell is resampled to the model's tile size before it is classified.
Scene grid: GeoPackage of cell polygons with row, col, class_id, class_name, score (probability of the chosen class) and one p_&lt;class&gt; probability per class; cells without data have no class. Styled by class with labels; a .qml style is written beside it.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Dask dashboard</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>Dask dashboard: {link}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Data</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <source>Detections</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Done: {n} layer(s) added.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Download</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Download cancelled; nothing was installed.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../model_manager.py"/>
        <source>Downloading {id} from {url} failed ({reason}). Nothing was installed.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Downloading {id}…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Draw polygons with a class field, then finetune.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Encoder: {encoder}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>Extent (leave empty for the whole raster)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Extract land cover</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>Extract land cover (instruction)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>Extracts the land covers an instruction names, as polygons, from a multispectral raster with a land-cover model run by the local MTP backend, and explains each polygon with its spectral indices.

Input: a raster file with blue, green, red and near-infrared bands (Sentinel-2, Landsat 8/9, NAIP, PlanetScope); with SWIR bands MNDWI, NDBI and BSI are measured too.
Instruction: words such as "extract water bodies larger than half a hectare", "vegetation with NDVI above 0.6", "buildings and roads". Targets: water (water bodies, lakes, ponds, rivers), vegetation (trees, forest, grass, crops), built-up (buildings, roads, urban areas) and bare soil; sizes in m2, ha, km2, acres or pixels; limits on NDVI, NDWI, MNDWI, NDBI, BSI and the score. It is read by a fixed grammar, not a language model: anything else is refused with the list of what it understands, and nothing is written.
Sensor: recognised from the band names or wavelengths GDAL reads; choose it when the raster does not say (a raster nobody can recognise is refused).
Model: id of a land-cover model (default {default}).
Output: GeoPackage layer land_cover, one polygon per region, with class_name, an explanation such as "NDWI 0.42 (high) and NIR reflectance 0.03 (low): open water" (also the map tip), target, score, area_m2, area_px and the mean of each index (empty where the raster lacks its bands).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <source>Fields: class_id (integer), class_name (the model's class), score (0–1), angle (degrees in [0, 180): direction of the long side, clockwise from grid north / up), width (short side) and length (long side) in CRS units (metres for a metric CRS, pixels without CRS).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <source>Fields: class_id (integer), class_name (the model's class), score (0–1). The boxes are aligned with the raster's pixel grid.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../instances.py"/>
        <source>Finds each object (a building, …) in a raster layer and traces its outline, using an instance-segmentation model run by the local MTP backend: touching buildings stay separate objects, unlike a segmentation's class raster.

Input: any raster layer. GDAL files are read directly; web, virtual or memory layers are first rendered at the model's ground sample distance. The model was trained at one pixel size (its gsd_m, shown in the log): imagery far finer or coarser finds fewer objects.
Extent: optional, in any CRS; objects whose centre lies inside it are kept, their outlines cut at its edge.
Model: id of an {task} model the backend knows (default {default}); a model of another task is refused.
Score threshold: keep objects whose score (the model's probability for the class, 0–1) is at least this; leave empty for the model's own threshold. Lower finds more objects and more false alarms.
Object outlines: GeoPackage (layer '{layer}') of one (multi)polygon per object in the input's CRS, following the pixel edges (pixel coordinates, y up, for a raster without CRS), sorted by descending score. Fields: class_id (integer), class_name (the model's class), score (0–1), area (CRS units², pixels² without CRS). No object gives an empty layer, not an error. Styled by class (semi-transparent fill, outline); a .qml style is written beside it.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <source>Finds objects (ships, vehicles, planes, …) in a raster layer and outlines each with a {boxes} box, using an object-detection model run by the local MTP backend.

Input: any raster layer. GDAL files are read directly; web, virtual or memory layers are first rendered at the model's ground sample distance. The model was trained at one pixel size (its gsd_m, shown in the log): imagery far finer or coarser finds fewer objects.
Extent: optional, in any CRS; objects whose centre lies inside it are kept (boxes are not clipped).
Model: id of a {task} model the backend knows (default {default}); a model of another task is refused.
Score threshold: keep objects whose score (the model's probability for the class, 0–1) is at least this; leave empty for the model's own threshold. Lower finds more objects and more false alarms.
Detections: GeoPackage (layer '{layer}') of one 4-corner polygon per object in the input's CRS (pixel coordinates, y up, for a raster without CRS), sorted by descending score. {fields} No object gives an empty layer, not an error. Styled by class (coloured outlines, no fill) with class and score labels; a .qml style is written beside it.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../change.py"/>
        <source>Finds what changed between two images of the same place with a change-detection model run by the local MTP backend.

Before / After: the earlier and the later raster layer. The result is on the before raster's pixel grid; the after raster may have another CRS, resolution or alignment (it is resampled onto the before grid on the fly). Both need a CRS, or neither (then they are taken as co-registered pixel for pixel). Their footprints must overlap. Web, virtual or memory layers are first rendered at the model's ground sample distance.
Extent: optional, in any CRS; the result covers it ∩ before ∩ after.
Model: id of a change-detection model the backend knows (default {default}).
Resample: when the before raster's pixel size differs from the model's by more than 2x (a warning says so), render both at the model's resolution first.
Change: GeoTIFF, 0 = no change (shown transparent), 1 = change (red, semi-transparent), 255 = nodata where either date has none; a .qml style is written beside it.
Minimum area: change regions smaller than this (CRS units² of the before raster, m² for a metric CRS) are left out of the polygons; empty = 9 pixels at the model's resolution. The raster keeps them.
Simplify: smooths the polygons' pixel staircases (tolerance in pixels; 0 = exact pixel edges).
Change polygons: optional GeoPackage, one polygon per connected change region with its area (area in CRS units², area_px in pixels); leave it empty to skip.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <location filename="../finetune_panel.py"/>
        <source>Finetune</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Finetune a segmentation, scene, change or detection model on your labels</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Finetuning</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Finetuning failed: {reason}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Finetuning report</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Finetuning {base} into {model}...</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Folder for the results and their .qml styles; remembered.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Give the new model an id: letters, digits, _ . - (it becomes a file name).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Held out: {split}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Held-out mIoU of the base model (segmentation)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Held-out mIoU of the new model (segmentation)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Held-out metric (mIoU, accuracy, change F1 or AP50)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Held-out score of the base model</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Held-out score of the new model</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Held-out {metric}: new model {new:.3f}, base model {base:.3f}, {baseline} {constant:.3f}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Index</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>Index stack</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>Indices (empty: all the bands allow)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <location filename="../finetune.py"/>
        <location filename="../scenes.py"/>
        <location filename="../segment.py"/>
        <source>Input raster</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>Input raster (multispectral)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_panel.py"/>
        <source>Install backend</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Install the backend (above) to run models.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Install the training environment</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_panel.py"/>
        <source>Installation cancelled; nothing was kept.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Installation stopped.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_panel.py"/>
        <source>Installation stopped; nothing was kept.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Installed</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>Installed models for MODEL:</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_panel.py"/>
        <source>Installing the backend: {step}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_panel.py"/>
        <source>Installing the backend…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Installing the training environment (PyTorch)…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Installing the training environment: {step}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../instances.py"/>
        <location filename="../models_panel.py"/>
        <source>Instance segmentation</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../instances.py"/>
        <source>Instance segmentation (object outlines)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <location filename="../land_cover.py"/>
        <source>Instruction</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>Instruction: {text}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Iterations</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>Job {id} submitted</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Keep objects whose score (0–1) is at least this; lower finds more, with more false alarms</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Labels (polygons; points for scene classification)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Labels (polygons; points for scenes)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Labels inside these polygons are held out to score the model; empty: the tool holds out a strip of the labelled area</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>Land cover</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>Land-cover extraction</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>Land-cover polygons</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>Landsat 8/9 OLI surface reflectance (7 bands)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>Layer '{layer}' is not a local GDAL file (provider {provider}); rendering it at {gsd} m/pixel to {path}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>MTP models</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../plugin.py"/>
        <source>MTP models: segmentation, change detection, scene classification, object detection (boxes, rotated boxes), instance segmentation, extract land cover</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../provider.py"/>
        <source>MTP remote-sensing foundation models</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_panel.py"/>
        <source>MTP: install the backend</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_panel.py"/>
        <source>MTP: install the training environment</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>MTP: list models</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_panel.py"/>
        <source>Make the Python environment the backend runs in (ONNX Runtime, CPU build; about 260 MB on disk)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Metric</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../change.py"/>
        <source>Minimum change area for polygons, in the before raster's CRS units² (m² for a metric CRS; empty = 9 pixels at the model's resolution)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <location filename="../models_panel.py"/>
        <source>Model</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>Model id</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Model id: {id}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Model {id} added: held-out {metric} {new:.3f} (base model {base:.3f}).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Models</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>NAIP RGBN (4 bands)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <location filename="../finetune_panel.py"/>
        <source>New model id</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>New model package</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_process.py"/>
        <source>No MTP backend is running and none is bundled with the plugin (looked for backend/ next to {plugin} and in {bundle}). Start one with `python -m backend serve` and set the URL in the MTP settings (or $MTP_QGIS_BACKEND_URL).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_process.py"/>
        <source>No backend environment is installed: click "Install backend" in the MTP dock, or run `python3 {installer}`, or set the backend Python (setting mtp_qgis/backend_python or $MTP_QGIS_BACKEND_PYTHON).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_panel.py"/>
        <source>No backend is installed yet: the models run in a local Python environment that the button below makes for you.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>ONNX model (*.onnx)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <source>Object detection</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Object detection (boxes)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <source>Object detection (horizontal boxes)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <location filename="../models_panel.py"/>
        <source>Object detection (rotated boxes)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../instances.py"/>
        <source>Object outlines</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Open result folder</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Open the report</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>PlanetScope 4-band</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>PlanetScope 8-band</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Provenance</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>Ran on {device}, {speed:.1f} Mpx/s.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>Ran on {device}.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <location filename="../finetune_panel.py"/>
        <source>Raster layer</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Reading the model index…</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Ready.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>Recognise from the raster</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <location filename="../models_panel.py"/>
        <source>Refresh</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Remove</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Render the input at the model's ground sample distance first; the result is then on that grid</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Report</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Report: {path}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>Resample inputs to the model's resolution when it differs by more than 2x</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Resample to the model's resolution</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>Resampling '{layer}' from {gsd:.3g} m to the model's {model_gsd:.3g} m/pixel ({path})</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Resolution</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <source>Rotated object detection</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Run</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>Running on the Dask cluster {address}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Running on the Dask cluster.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Running {model} on {layer}...</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Save results in</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <location filename="../scenes.py"/>
        <source>Scene classification</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../scenes.py"/>
        <source>Scene classification (grid)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../scenes.py"/>
        <source>Scene grid</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Score threshold</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <source>Score threshold 0–1 (empty = the model's own)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <source>Score threshold {value}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <source>Score threshold: the model's own</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <location filename="../models_panel.py"/>
        <location filename="../segment.py"/>
        <source>Segmentation</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../segment.py"/>
        <source>Semantic segmentation</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Sensor</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>Sensor (which band is blue, red, NIR, ...)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>Sentinel-2 L1C (13 bands)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>Sentinel-2 L2A (12 bands)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_panel.py"/>
        <source>Show log</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Side of a grid cell in pixels of the input raster</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Simplify outlines</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../change.py"/>
        <source>Simplify polygon outlines (tolerance in pixels; 0 = exact pixel edges)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Size</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Smallest change</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <location filename="../models_panel.py"/>
        <source>Spectral indices</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>Spectral indices (index stack)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>State</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <location filename="../scenes.py"/>
        <source>Style with the class colours and labels written to {path}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>Style with the class colours and the explanation as map tip written to {path}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../instances.py"/>
        <source>Style with the class colours written to {path}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../segment.py"/>
        <source>Style with the class names written to {path}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../change.py"/>
        <source>Style written to {path}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <location filename="../models_panel.py"/>
        <source>Task</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_process.py"/>
        <source>That Python lacks packages the backend needs: click "Install backend" in the MTP dock (or run `python3 {installer}`), or point the plugin at another Python (setting mtp_qgis/backend_python or $MTP_QGIS_BACKEND_PYTHON). </source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <location filename="../finetune_panel.py"/>
        <source>The MTP Processing provider is not loaded; re-enable the plugin.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_process.py"/>
        <source>The MTP backend ({python} -m backend serve) exited with code {code} while starting. {advice}Last lines of {log}:</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../client.py"/>
        <source>The MTP backend at {url} is not reachable ({error}). Check that it is running, or unset the configured backend URL so the plugin starts one.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../client.py"/>
        <source>The MTP backend at {url} rejected the access token (HTTP 401). The plugin reads the token from {source}; it must match the backend's token ($MTP_QGIS_TOKEN or ~/.config/mtp_qgis/token on the backend's machine).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_process.py"/>
        <source>The MTP backend did not become ready within {seconds:.0f} s. Last lines of {log}:</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>The MTP backend stopped while running job {id}; the partial output was removed. Run the algorithm again (the plugin restarts the backend). Details: {details}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../client.py"/>
        <source>The backend at {url} answered {path} with something that is not JSON.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_panel.py"/>
        <source>The backend could not be installed: {reason}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../client.py"/>
        <source>The backend refused the request (HTTP {status}): {detail}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../change.py"/>
        <source>The change polygons</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../change.py"/>
        <source>The change raster</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../change.py"/>
        <source>The change raster and the change polygons need different files.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <source>The detections</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>The extent does not intersect the layer '{layer}'.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>The id of the package to start from: a segmentation or scene model (labels are areas of a class; a bundled one or an imported official MTP one) or a detection model such as mtp_rdet_default or an imported official MTP detector (labels are one polygon per object; draw every object in the labelled area)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>The index stack</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../backend_panel.py"/>
        <source>The installer stopped unexpectedly ({error}).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>The land-cover polygons</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../change.py"/>
        <source>The minimum area and the simplification tolerance must be numbers &gt;= 0.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../model_manager.py"/>
        <source>The model index {url} could not be read ({detail}).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <source>The model was trained at {gsd} m/pixel</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../instances.py"/>
        <source>The object outlines</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../segment.py"/>
        <source>The output</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>The report must be an .html file, not '{path}'.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>The result {path} could not be opened.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../scenes.py"/>
        <source>The scene grid</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <source>The score threshold must be a number between 0 and 1, not '{value}'.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>The training environment could not be installed: {reason}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>The training environment is installed: press Finetune again.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>The {task} job was cancelled in the backend; no output was written.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Time budget</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Time budget in minutes (0: none)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Training '{id}' from {base}; it will be written to {folder}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Training iterations</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Trains a segmentation, scene-classification, change-detection or detection model on your own polygons, starting from a model package of that task, and adds it to your models (the dock and the task's algorithm list it at once).

Input raster: the imagery the labels were drawn on; training data is cut from it at the base model's ground sample distance.
After raster: change detection only, the later date (the input raster is the earlier one); put on the input raster's grid. Draw the changes as polygons: every pixel of their extent outside them counts as unchanged (a polygon of the class 'no change' extends the area checked).
Labels: polygons, each with its class in the class field (text or number). Segmentation: areas of one class; pixels under no polygon are ignored, not taken as background: draw a 'background' class if you want one. Detection: one polygon per object (its box, or its outline: a rotated detector learns its smallest rotated rectangle, a horizontal one its bounds); draw every object inside the labelled area, since image between objects is taken as background; an instance model learns the outlines themselves. Scene classification: areas of one class as for segmentation, or points, each labelling the cell of the model's tile size around it; a cell counts when half of it is labelled.
Base model: a segmentation, scene-classification, change-detection, (rotated) detection or instance package written by the project's training (e.g. {default}, mtp_scene_default, mtp_change_default, mtp_rdet_default, mtp_inst_default), or an official MTP model imported with `python -m training import-official` (segmentation, scene, change, detection or rotated detection).
Validation area: optional polygons; labels inside them are held out to score the model. Without it the tool holds out a strip along one side of the labelled area (the log and report say which).
Iterations / time budget: training stops at whichever comes first.
Model id: the new model's id (a file name in your models folder).
Report: HTML page with the loss curve and held-out figures of the new model, the base model and a baseline (segmentation mIoU vs the best constant class; scenes accuracy vs the majority class; change F1 vs pixel differences; detection AP50 vs the median box on a grid).</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Unchecked: the model's own threshold</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Use current map extent</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>Validation area</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune.py"/>
        <source>Validation area (optional)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>What to extract, in words: water (lakes, ponds, rivers), vegetation (trees, grass, crops), built-up (buildings, roads) or bare soil, with sizes (larger than 1 ha, smaller than 500 m2) and index limits (NDVI above 0.6); several joined with 'and'. A fixed grammar reads it, not a language model: anything else is refused with the list of what it understands.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>Where</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Which band is blue, red, NIR, ...: recognised from the band names or wavelengths of the raster, or chosen here</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>Write an instruction first, e.g. "extract water bodies".</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../land_cover.py"/>
        <source>Write an instruction, e.g. "extract water bodies".</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>bundled</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../styling.py"/>
        <source>change</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>coarser</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>e.g. extract water bodies larger than half a hectare</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>e.g. my_region_landcover</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>finer</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <source>horizontal (axis-aligned)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>installed</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>model's tile size</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>no (pixel edges)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../styling.py"/>
        <source>no change</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../styling.py"/>
        <source>no data</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../finetune_panel.py"/>
        <source>no limit</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>no reason given</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../client.py"/>
        <source>none</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>none: the backend's machine</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <source>rotated (oriented)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <location filename="../finetune_panel.py"/>
        <source>see the log messages panel (Processing tab)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>temporary folder (lost when QGIS closes)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>the backend</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../model_manager.py"/>
        <source>the connection ended early</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>the model</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../client.py"/>
        <source>unknown model '{model}'; the backend has: {known}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>{gsd:.3g} m/pixel</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>{id} added to {folder}.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>{id} installed (checksum verified) in {folder}.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>{id} is already installed; remove it first to download it again.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>{id} removed.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>{kb:.0f} kB</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>{mb:.1f} MB</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>{n} model(s) in the index.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../detect.py"/>
        <source>{n} object(s) found</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>{n} {task} model(s) available.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../models_panel.py"/>
        <source>{roles} (any sensor that has them)</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>{task} cancelled; no output was written.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>{task} failed in the backend: {reason}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../dock.py"/>
        <source>{task} failed: {reason}</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>{what} must be a {formats} file, not '{output}'.</source>
        <translation type="unfinished"></translation>
    </message>
    <message>
        <location filename="../algorithm_base.py"/>
        <source>{what} must be written to a file of its own ({formats}; 'Save to File…'), not '{output}': the backend writes the whole file.</source>
        <translation type="unfinished"></translation>
    </message>
</context>
</TS>
