"""Fake Earth Engine REST API on 127.0.0.1 for the genuine earthengine-api client.

Answers what ``ee.Initialize`` / ``ee.data.listImages`` / ``ee.data.computePixels`` call:

* ``GET /$discovery/rest`` - a discovery document (v1) naming the methods used, ``rootUrl``
  pointing back here, ``prettyPrint`` among the global parameters;
* ``GET /v1/projects/P/algorithms`` - signatures of the Image algorithms it evaluates
  (load, select, constant, multiply, round, toUint16, addBands);
* ``GET /v1/projects/earthengine-public/assets/COLLECTION:listAssets?filter=...`` - images of
  :data:`FAKE_IMAGES` matching the startTime/endTime/intersects/CLOUD_COVER filter;
* ``POST /v1/projects/P/image:computePixels`` - the expression evaluated over the requested grid
  of the real bundled scene behind the asset (TOA float32 = DN / 255 * 0.5, QA_PIXEL bit 0 =
  fill outside the image, bit 3 = cloud on saturated pixels), as ``NPY`` (structured array, one
  field per band) or ``GEO_TIFF`` (one GeoTIFF band per image band, the bands' common dtype);
* two collections: Collection 2 TOA (:data:`COLLECTION`, bands B3/B2/B1 float32 + QA_PIXEL) and
  Collection 2 Level-2 (:data:`SR_COLLECTION`, the same images: bands SR_B3/SR_B2/SR_B1 uint16 +
  QA_PIXEL). Surface reflectance is derived from the same TOA by a plausible linear atmospheric
  correction, ``sr = SR_GAIN * toa + SR_BIAS`` (0.95 x TOA - 0.01: a little path radiance removed),
  stored as Collection 2 L2 DN: ``round((sr - SR_OFFSET) / SR_SCALE)`` with SR_SCALE 2.75e-05 and
  SR_OFFSET -0.2 (USGS's scale/offset), clipped to 1..65535, 0 = fill outside the image;
* ``POST /token`` - OAuth token endpoint for service-account keys whose ``token_uri`` points here.

Quotas, as Earth Engine enforces them per project (each rejection is counted in ``rejected``):
at most ``max_concurrent`` (40) computePixels requests in progress - one more is answered 429 at
once, never queued; at most ``max_requests_per_s`` (100) accepted requests in any 1 s window -
more are answered 429; a request whose pixels exceed ``max_request_bytes`` (48 MiB, counted as
Earth Engine does: width x height x sum over bands of (itemsize + 1)) is answered 400 with Earth
Engine's text ``Total request size (N bytes) must be less than or equal to 50331648 bytes.``

Several dates of one footprint (reference acquisitions): images of the same bundled scene in the
Landsat 7 and Landsat 8 collections, with OLI band names (B4/B3/B2 = red/green/blue, B1 coastal),
another ``gain`` (radiometry of another date) or ``cloudy`` (QA_PIXEL cloud bit on every pixel).

A :class:`FakeImage` may span ``tiles`` x ``tiles`` copies of its bundled scene (pixels repeat),
so benchmarks get Landsat-sized footprints out of small bundled scenes. Evaluated scenes are
cached per (scene, expression), so serving a window is one slice copy; with ``cache_bytes`` the
answers themselves are kept for identical requests (other dates of the same scene and grid).

Faults are injectable: ``latency_s`` per computePixels (total server time, rendering included),
``faults`` (a FIFO consumed one per accepted computePixels call: "429", "503", "timeout",
"truncated", "garbage" (a 200 body that is no NPY), "wrong_shape" (a valid NPY of another
shape)) and ``always`` (a fault applied to every accepted call). ``hold`` (a ``threading.Event``):
every accepted computePixels call waits until it is set - a test can then see requests in flight
at once (and the quotas refuse more) without relying on ``latency_s`` outlasting thread start-up.
"""
from __future__ import annotations

import io
import json
import re
import threading
import time
from collections import OrderedDict, deque
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlparse

import numpy as np
import shapely.geometry
from pyproj import Transformer

from pipeline.scenes import read_scene

COLLECTION = "LANDSAT/LE07/C02/T1_TOA"
SR_COLLECTION = "LANDSAT/LE07/C02/T1_L2"
SR_SCALE, SR_OFFSET = 2.75e-05, -0.2  # Collection 2 Level-2 surface reflectance = DN x scale + offset
SR_GAIN, SR_BIAS = 0.95, -0.01        # the fake's atmospheric correction: sr = 0.95 x toa - 0.01
L8_COLLECTION = "LANDSAT/LC08/C02/T1_TOA"
MAX_REQUEST_BYTES = 48 * 2**20
#: Windows up to this many pixels a side are served by one slice of the (wrapped) evaluated scene.
WRAP_MARGIN = 2048
SOURCE_BANDS = ("B3", "B2", "B1", "QA_PIXEL")


class FakeImage(NamedTuple):
    """A fake Earth Engine image: its bundled 30 m scene, acquisition date, CLOUD_COVER (%), how
    many copies of the scene it spans along each axis (``tiles`` > 1: pixels wrap around) and its
    product (``toa``: B3/B2/B1 float32, ``sr``: SR_B3/SR_B2/SR_B1 uint16; QA_PIXEL in both). Other
    dates of a footprint: ``bands`` names the red, green, blue bands (Landsat 8/9 OLI: B4, B3, B2,
    with B1 a distinct coastal band), ``gain`` scales the TOA values (another date's radiometry),
    ``cloudy`` sets the QA_PIXEL cloud bit on every pixel with data."""

    scene: str
    date: str
    cloud: float
    tiles: int = 1
    product: str = "toa"
    bands: tuple[str, str, str] = ("B3", "B2", "B1")
    gain: float = 1.0
    cloudy: bool = False

    @property
    def look(self) -> str | tuple:
        """What its pixels depend on: the scene alone for a plain TOA image (cache key)."""
        if (self.bands, self.gain, self.cloudy, self.product) == (("B3", "B2", "B1"), 1.0, False, "toa"):
            return self.scene
        return (self.scene, self.bands, self.gain, self.cloudy, self.product)


FAKE_IMAGES: dict[str, FakeImage] = {
    f"{COLLECTION}/LE07_040028_20010706": FakeImage("LT05_040028_20060706", "2001-07-06", 4.0),
    f"{COLLECTION}/LE07_224078_20020518": FakeImage("LC08_224078_20200518_ITAIPU", "2002-05-18", 12.0),
    f"{COLLECTION}/LE07_038034_20000818": FakeImage("LC08_038034_20150818_ZION", "2000-08-18", 8.0),
    f"{COLLECTION}/LE07_038034_20010821": FakeImage("LC08_038034_20150818_ZION", "2001-08-21", 55.0),
    # several dates of one footprint (reference acquisitions), after the default date window
    f"{COLLECTION}/LE07_038034_20150810": FakeImage("LC08_038034_20150818_ZION", "2015-08-10", 5.0),
    f"{COLLECTION}/LE07_038034_20150812": FakeImage("LC08_038034_20150818_ZION", "2015-08-12", 10.0, gain=0.9,
                                                    cloudy=True),
    f"{L8_COLLECTION}/LC08_038034_20150818": FakeImage("LC08_038034_20150818_ZION", "2015-08-18", 3.0,
                                                       bands=("B4", "B3", "B2"), gain=1.1),
    f"{COLLECTION}/LE07_038034_20150927": FakeImage("LC08_038034_20150818_ZION", "2015-09-27", 6.0, gain=0.95),
}
# the Level-2 twins of the TOA images: the same scenes and dates in the L2 collection
FAKE_IMAGES.update({f"{SR_COLLECTION}/{iid.rsplit('/', 1)[1]}": image._replace(product="sr")
                    for iid, image in list(FAKE_IMAGES.items())})


def _sig(name: str, args: list[tuple[str, str, bool]]) -> dict:
    return {"name": f"algorithms/{name}", "description": name, "returnType": "Image<unknown bands>",
            "arguments": [{"argumentName": a, "type": t, **({"optional": True} if opt else {})} for a, t, opt in args]}


ALGORITHMS = [
    _sig("Image.load", [("id", "String", False), ("version", "Long", True)]),
    _sig("Image.select", [("input", "Image", False), ("bandSelectors", "List<Object>", False),
                          ("newNames", "List<String>", True)]),
    _sig("Image.constant", [("value", "Object", False)]),
    _sig("Image.multiply", [("image1", "Image", False), ("image2", "Image", False)]),
    _sig("Image.round", [("value", "Image", False)]),
    _sig("Image.toUint16", [("value", "Image", False)]),
    _sig("Image.addBands", [("dstImg", "Image", False), ("srcImg", "Image", False), ("names", "List<String>", True),
                            ("overwrite", "Boolean", True)]),
]


def _method(mid: str, http: str, path: str, params: dict, request: bool = False, paged: bool = False) -> dict:
    m = {"id": f"earthengine.{mid}", "httpMethod": http, "path": path, "flatPath": path,
         "parameterOrder": [k for k, v in params.items() if v.get("required")], "parameters": params,
         "response": {"type": "object", "properties": {"nextPageToken": {"type": "any"}}} if paged else {"type": "any"}}
    if request:
        m["request"] = {"type": "any"}
    return m


def discovery_document(root: str) -> dict:
    q = lambda t="string": {"location": "query", "type": t}  # noqa: E731
    project = {"location": "path", "pattern": "^projects/[^/]+$", "required": True, "type": "string"}
    parent = {"location": "path", "pattern": "^projects/[^/]+/assets/.*$", "required": True, "type": "string"}
    glob = {k: {"location": "query", "type": t} for k, t in
            (("prettyPrint", "boolean"), ("alt", "string"), ("key", "string"), ("fields", "string"),
             ("quotaUser", "string"), ("access_token", "string"), ("$.xgafv", "string"))}
    return {
        "kind": "discovery#restDescription", "discoveryVersion": "v1", "id": "earthengine:v1", "name": "earthengine",
        "version": "v1", "rootUrl": root, "servicePath": "", "baseUrl": root, "batchPath": "batch",
        "protocol": "rest", "parameters": glob, "schemas": {},
        "resources": {"projects": {"resources": {
            "algorithms": {"methods": {"list": _method("projects.algorithms.list", "GET", "v1/{+project}/algorithms",
                                                       {"project": project}, paged=True)}},
            "image": {"methods": {"computePixels": _method("projects.image.computePixels", "POST",
                                                           "v1/{+project}/image:computePixels",
                                                           {"project": project}, request=True)}},
            "assets": {"methods": {"listAssets": _method(
                "projects.assets.listAssets", "GET", "v1/{+parent}:listAssets",
                {"parent": parent, "filter": q(), "pageSize": q("integer"), "pageToken": q(), "view": q()},
                paged=True)}},
        }}},
    }


class RequestError(ValueError):
    """A request the fake answers with an HTTP error (status, Earth Engine-style message)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- pixels

@lru_cache(maxsize=8)
def _scene(scene_id: str):
    return read_scene(scene_id)


@lru_cache(maxsize=16)
def footprint_lonlat(scene_id: str, tiles: int = 1) -> shapely.geometry.Polygon:
    """Footprint (EPSG:4326) of ``tiles`` x ``tiles`` copies of the scene, anchored at its upper-left corner."""
    s = _scene(scene_id)
    h, w = s.valid.shape
    tr = Transformer.from_crs(s.epsg, 4326, always_xy=True)
    corners = [s.transform @ xy for xy in ((0, 0), (w * tiles, 0), (w * tiles, h * tiles), (0, h * tiles))]
    return shapely.geometry.Polygon([tr.transform(x, y) for x, y in corners])


def _grid(image: FakeImage) -> dict:
    s = _scene(image.scene)
    t = s.transform
    return {"crsCode": f"EPSG:{s.epsg}",
            "dimensions": {"width": s.valid.shape[1] * image.tiles, "height": s.valid.shape[0] * image.tiles},
            "affineTransform": {"scaleX": t.a, "shearX": t.b, "translateX": t.c, "shearY": t.d, "scaleY": t.e,
                                "translateY": t.f}}


@lru_cache(maxsize=8)
def _source_bands(scene_id: str, product: str = "toa") -> dict[str, np.ndarray]:
    """The fake image's bands over its scene: B3/B2/B1 TOA float32 (``toa``) or SR_B3/SR_B2/SR_B1
    Level-2 DN uint16 (``sr``, see the module docstring), QA_PIXEL uint16 (fill where the scene has
    no data, cloud bit on saturated pixels)."""
    s = _scene(scene_id)
    rgb = np.where(s.valid, s.rgb, 0)
    qa = np.where(s.valid, 0, 1).astype(np.uint16)
    qa |= np.where(s.valid & (rgb.mean(axis=0) > 235), 1 << 3, 0).astype(np.uint16)
    bands = {b: (rgb[i] / 255.0 * 0.5).astype(np.float32) for i, b in enumerate(("B3", "B2", "B1"))}
    if product == "sr":
        bands = {f"SR_{b}": np.where(s.valid, sr_dn(toa), 0).astype(np.uint16) for b, toa in bands.items()}
    bands["QA_PIXEL"] = qa
    return bands


def sr_dn(toa: np.ndarray) -> np.ndarray:
    """Level-2 surface reflectance DN (uint16) of the fake's TOA reflectance (module docstring)."""
    sr = SR_GAIN * toa.astype(np.float64) + SR_BIAS
    return np.clip(np.rint((sr - SR_OFFSET) / SR_SCALE), 1, 65535).astype(np.uint16)




@lru_cache(maxsize=8)
def _look_bands(look: str | tuple) -> dict[str, np.ndarray]:
    """The bands of an image's ``look`` (:attr:`FakeImage.look`): the scene's, renamed, scaled, clouded."""
    if isinstance(look, str):
        return _source_bands(look)
    scene, names, gain, cloudy, product = look
    if product == "sr":  # the Level-2 twin of the TOA look
        toa = _look_bands((scene, names, gain, cloudy, "toa"))
        data = (toa["QA_PIXEL"] & 1) == 0
        out = {f"SR_{b}": np.where(data, sr_dn(v), 0).astype(np.uint16) for b, v in toa.items() if b != "QA_PIXEL"}
        return {**out, "QA_PIXEL": toa["QA_PIXEL"]}
    base = _source_bands(scene)
    out = {name: (base[b] * np.float32(gain)).astype(np.float32) for name, b in zip(names, ("B3", "B2", "B1"))}
    if "B1" not in out:  # OLI coastal aerosol: a band of its own, never the blue one
        out["B1"] = (base["B1"] * np.float32(0.8 * gain)).astype(np.float32)
    qa = base["QA_PIXEL"].copy()
    if cloudy:
        qa |= np.where((qa & 1) == 0, 1 << 3, 0).astype(np.uint16)
    out["QA_PIXEL"] = qa
    return out


def _fill_pixel(look: str | tuple) -> dict[str, np.ndarray]:
    return {k: (np.ones if k == "QA_PIXEL" else np.zeros)((1, 1), v.dtype) for k, v in _look_bands(look).items()}


def _resolve(values: dict, node: Any) -> Any:
    while isinstance(node, dict) and "valueReference" in node:
        node = values[node["valueReference"]]
    return node


def _evaluate(values: dict, node: Any, source: dict[str, np.ndarray]) -> Any:
    """Evaluate a serialized expression node pixel-wise over ``source`` (band -> 2-D array):
    images are ordered dicts band -> array; other nodes are plain values."""
    node = _resolve(values, node)
    if "constantValue" in node:
        return node["constantValue"]
    if "arrayValue" in node:
        return [_evaluate(values, v, source) for v in node["arrayValue"]["values"]]
    inv = node.get("functionInvocationValue")
    if inv is None:
        raise RequestError(400, f"fake server cannot evaluate expression node {sorted(node)}")
    name = inv["functionName"]
    args = {k: _evaluate(values, v, source) for k, v in inv.get("arguments", {}).items()}
    if name == "Image.load":
        return dict(source)
    if name == "Image.constant":
        return {"constant": np.asarray(args["value"])}
    if name == "Image.select":
        image, selectors = args["input"], args["bandSelectors"]
        missing = [b for b in selectors if b not in image]
        if missing:
            raise RequestError(400, f"Image.select: Pattern '{missing[0]}' did not match any bands.")
        return {new: image[b] for b, new in zip(selectors, args.get("newNames") or selectors)}
    if name == "Image.multiply":
        a, b = args["image1"], args["image2"]
        other = next(iter(b.values())) if len(b) == 1 else None
        out = {}
        for k, v in a.items():
            w = other if other is not None else b[k]
            floats = v.dtype.kind == "f" or np.asarray(w).dtype.kind == "f"
            dtype = np.float32 if floats else np.int64  # "the union of the input types" (float32 stays float32)
            out[k] = (v.astype(dtype) * np.asarray(w, dtype)).astype(dtype)
        return out
    if name == "Image.round":  # the nearest integer, halves away from zero
        return {k: np.copysign(np.floor(np.abs(v) + 0.5), v).astype(v.dtype) if v.dtype.kind == "f" else v
                for k, v in args["value"].items()}
    if name == "Image.toUint16":
        return {k: np.clip(v, 0, 65535).astype(np.uint16) for k, v in args["value"].items()}
    if name == "Image.addBands":
        out = dict(args["dstImg"])
        for k, v in args["srcImg"].items():
            if args.get("names") and k not in args["names"]:
                continue
            if k in out and not args.get("overwrite"):
                raise RequestError(400, f"Image.addBands: duplicate band name '{k}'")
            out[k] = v
        return out
    raise RequestError(400, f"fake server does not implement {name}")


def _structured(bands: dict[str, np.ndarray]) -> np.ndarray:
    """Band dict (equal shapes) -> structured array, one field per band, in band order."""
    first = next(iter(bands.values()))
    out = np.empty(first.shape, dtype=[(k, v.dtype.newbyteorder("<")) for k, v in bands.items()])
    for k, v in bands.items():
        out[k] = v
    return out


_EVALUATED: dict[tuple[str | tuple, str, bool], tuple[np.ndarray, np.ndarray]] = {}
_EVALUATED_LOCK = threading.RLock()


def evaluated_scene(scene_id: str | tuple, expression: str, wrapped: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(evaluated scene, evaluated fill pixel) as structured arrays for one expression (its JSON with
    the asset id blanked: every image of a scene and product shares it); ``wrapped``: the scene tiled
    to (H + WRAP_MARGIN, W + WRAP_MARGIN), so a window of repeating pixels is one slice. Cached."""
    key = (scene_id, expression, wrapped)
    with _EVALUATED_LOCK:  # one evaluation per key, even when many requests ask at once
        if key not in _EVALUATED:
            if wrapped:
                scene, fill = evaluated_scene(scene_id, expression)
                h, w = scene.shape
                reps = (-(-(h + WRAP_MARGIN) // h), -(-(w + WRAP_MARGIN) // w))
                _EVALUATED[key] = (np.tile(scene, reps)[:h + WRAP_MARGIN, :w + WRAP_MARGIN].copy(), fill)
            else:
                _EVALUATED[key] = _evaluate_scene(scene_id, expression)
        return _EVALUATED[key]


def _evaluate_scene(scene_id: str | tuple, expression: str) -> tuple[np.ndarray, np.ndarray]:
    expr = json.loads(expression)
    values = expr["values"]
    result = _evaluate(values, values[expr["result"]], _look_bands(scene_id))
    fill = _evaluate(values, values[expr["result"]], _fill_pixel(scene_id))
    if not isinstance(result, dict) or not result:
        raise RequestError(400, "computePixels needs an Image expression")
    shape = _look_bands(scene_id)["QA_PIXEL"].shape
    return (_structured({k: np.broadcast_to(v, shape) for k, v in result.items()}),
            _structured({k: np.broadcast_to(v, (1, 1)) for k, v in fill.items()}))


def _indices(start: float, scale: float, n: int, origin: float, pixel: float) -> np.ndarray:
    """Scene pixel index of each of ``n`` grid pixel centres along one axis."""
    centres = start + (np.arange(n) + 0.5) * scale
    return np.floor((centres - origin) / pixel).astype(np.int64)


def render(asset: str, expression: str, grid: dict) -> np.ndarray:
    """The expression over ``grid`` (nearest neighbour) as a structured array (height, width)."""
    image = FAKE_IMAGES[asset]
    s = _scene(image.scene)
    epsg = int(str(grid.get("crsCode", "")).split(":")[-1] or 0)
    if epsg != s.epsg:
        raise RequestError(400, f"fake server only serves {asset} in EPSG:{s.epsg}, got {grid.get('crsCode')}")
    w, h = int(grid["dimensions"]["width"]), int(grid["dimensions"]["height"])
    at = grid["affineTransform"]
    rows = _indices(at["translateY"], at["scaleY"], h, s.transform.f, s.transform.e)
    cols = _indices(at["translateX"], at["scaleX"], w, s.transform.c, s.transform.a)
    scene, fill = evaluated_scene(image.look, expression)
    H, W = scene.shape
    in_r = (rows >= 0) & (rows < H * image.tiles)
    in_c = (cols >= 0) & (cols < W * image.tiles)
    r0, c0 = int(rows[0]) % H, int(cols[0]) % W
    if np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1) and r0 + h <= H and c0 + w <= W:
        out = scene[r0:r0 + h, c0:c0 + w].copy()  # consecutive pixels inside one copy of the scene: a slice
    elif np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1) and h <= WRAP_MARGIN and w <= WRAP_MARGIN:
        out = evaluated_scene(image.look, expression, wrapped=True)[0][r0:r0 + h, c0:c0 + w].copy()
    else:
        out = scene[(rows % H)[:, None], (cols % W)[None, :]]
    out[~in_r, :] = fill[0, 0]
    out[:, ~in_c] = fill[0, 0]
    return out


def _select_expression(bands: list[str]) -> str:
    return json.dumps({"result": "0", "values": {"0": {"functionInvocationValue": {
        "functionName": "Image.select", "arguments": {
            "input": {"functionInvocationValue": {"functionName": "Image.load", "arguments": {}}},
            "bandSelectors": {"constantValue": list(bands)}}}}}}, sort_keys=True)


def render_window(asset: str, bands: list[str], grid: dict) -> np.ndarray:
    """``Image(asset).select(bands)`` over ``grid`` as a structured array (TOA float32 or SR DN uint16,
    QA_PIXEL uint16): the reference tests compare exported pixels with."""
    return render(asset, _select_expression(bands), grid)


def request_bytes(arr: np.ndarray) -> int:
    """Earth Engine's size of a computePixels answer: pixels x sum over bands of (itemsize + 1 mask byte)."""
    return int(arr.shape[0] * arr.shape[1] * sum(arr.dtype[k].itemsize + 1 for k in arr.dtype.names))


def npy_bytes(arr: np.ndarray) -> list:
    """An NPY file as [header bytes, the array's buffer] (sent as is: no copy of the pixels)."""
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(arr))
    return [head.getvalue(), memoryview(np.ascontiguousarray(arr)).cast("B")]


def geotiff_bytes(arr: np.ndarray, grid: dict) -> bytes:
    """One GeoTIFF band per field (in field order, described by its name), in the fields' common dtype."""
    from affine import Affine
    from rasterio.io import MemoryFile

    names = list(arr.dtype.names)
    dtype = np.result_type(*[arr.dtype[k] for k in names])
    at = grid["affineTransform"]
    transform = Affine(at["scaleX"], at.get("shearX", 0.0), at["translateX"], at.get("shearY", 0.0), at["scaleY"],
                       at["translateY"])
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=arr.shape[1], height=arr.shape[0], count=len(names), dtype=dtype,
                      crs=grid["crsCode"], transform=transform) as ds:
            for i, k in enumerate(names, start=1):
                ds.write(arr[k].astype(dtype), i)
                ds.set_band_description(i, k)
        return mem.read()


def _asset_free(expr: dict) -> tuple[str, str]:
    """(the expression's JSON with the loaded asset id blanked, that asset id)."""
    assets = []

    def strip(node):
        if isinstance(node, dict):
            inv = node.get("functionInvocationValue")
            if inv and inv.get("functionName") == "Image.load":
                ident = _resolve(expr["values"], inv["arguments"]["id"])
                assets.append(ident["constantValue"])
                return {"functionInvocationValue": {"functionName": "Image.load", "arguments": {}}}
            return {k: strip(v) for k, v in node.items()}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    values = {k: strip(v) for k, v in expr["values"].items()}
    if len(set(assets)) != 1:
        raise RequestError(400, f"fake server evaluates expressions over exactly one image, got {sorted(set(assets))}")
    return json.dumps({"result": expr["result"], "values": values}, sort_keys=True), assets[0]


def parse_filter(flt: str) -> dict:
    """The listAssets filter the client builds: startTime/endTime bounds, CLOUD_COVER, intersects."""
    regions = [shapely.geometry.shape(json.loads(r.replace("'", '"'))) for r in re.findall(r'intersects\("([^"]+)"\)', flt)]
    return {"start": [v[:10] for v in re.findall(r'startTime\s*>=\s*"([^"]+)"', flt)],
            "end": [v[:10] for v in re.findall(r'endTime\s*<\s*"([^"]+)"', flt)],
            "cloud": [float(v) for v in re.findall(r'properties\.CLOUD_COVER\s*<\s*([0-9.]+)', flt)],
            "regions": regions}


def _match(image_id: str, flt: dict) -> bool:
    image = FAKE_IMAGES[image_id]
    return (all(image.date >= v for v in flt["start"]) and all(image.date < v for v in flt["end"])
            and all(image.cloud < v for v in flt["cloud"])
            and all(r.intersects(footprint_lonlat(image.scene, image.tiles)) for r in flt["regions"]))


def _band_listing(image: FakeImage) -> list[tuple[str, str]]:
    """(band id, precision) of an image's listed bands."""
    names = sorted({"B1", "B2", "B3", *image.bands})
    if image.product == "sr":
        return [(f"SR_{b}", "INT") for b in names] + [("QA_PIXEL", "INT")]
    return [(b, "FLOAT") for b in names] + [("QA_PIXEL", "INT")]


# --------------------------------------------------------------------------- server

class FakeEarthEngine:
    """Context manager running the fake server in a thread; ``url`` is its base URL."""

    def __init__(self, latency_s: float = 0.0, max_concurrent: int = 40, faults: list[str] | None = None,
                 always: str | None = None, timeout_sleep_s: float = 3.0, max_requests_per_s: float = 100.0,
                 max_request_bytes: int = MAX_REQUEST_BYTES, cache_bytes: int = 0,
                 hold: threading.Event | None = None):
        self.latency_s, self.always, self.timeout_sleep_s = latency_s, always, timeout_sleep_s
        self.hold = hold  # accepted computePixels calls wait until it is set (see module docstring)
        self.max_concurrent, self.max_requests_per_s, self.max_request_bytes = max_concurrent, max_requests_per_s, max_request_bytes
        self.faults = deque(faults or [])
        self.cache_bytes = cache_bytes  # answers kept for identical requests (same scene, expression, grid)
        self._answers: OrderedDict[tuple, tuple[list, str]] = OrderedDict()
        self._cached = 0
        self.lock = threading.Lock()
        self.counts = {"computePixels": 0, "listAssets": 0, "algorithms": 0, "discovery": 0, "token": 0}
        self.rejected = {"concurrency": 0, "rate": 0, "size": 0}
        self.formats: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.max_pixels = 0
        self._starts: deque[float] = deque()
        self.auth_headers: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle ---
    def __enter__(self) -> "FakeEarthEngine":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                fake._get(self)

            def do_POST(self):
                fake._post(self)

        ThreadingHTTPServer.request_queue_size = 256
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def __exit__(self, *exc) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    # --- helpers ---
    def _count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    @staticmethod
    def _send(h, status: int, body: bytes | list, ctype: str = "application/json", truncate: bool = False) -> None:
        parts = body if isinstance(body, list) else [body]
        size = sum(len(part) for part in parts)
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(size))
        if truncate:
            h.send_header("Connection", "close")
        h.end_headers()
        if truncate:
            h.wfile.write(b"".join(bytes(part) for part in parts)[: size // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        for part in parts:
            h.wfile.write(part)

    def _json(self, h, obj, status: int = 200) -> None:
        self._send(h, status, json.dumps(obj).encode())

    def _error(self, h, status: int, message: str) -> None:
        reason = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}
        self._json(h, {"error": {"code": status, "message": message, "status": reason.get(status, "ERROR")}}, status)

    def _admit(self) -> str | None:
        """Take a request slot, or say which quota refuses it ("concurrency", "rate")."""
        with self.lock:
            now = time.monotonic()
            while self._starts and now - self._starts[0] >= 1.0:
                self._starts.popleft()
            if self.in_flight >= self.max_concurrent:
                refused = "concurrency"
            elif len(self._starts) >= self.max_requests_per_s:
                refused = "rate"
            else:
                self._starts.append(now)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                return None
            self.rejected[refused] += 1
            return refused

    # --- routes ---
    def _get(self, h) -> None:
        url = urlparse(h.path)
        if url.path == "/$discovery/rest":
            self._count("discovery")
            return self._json(h, discovery_document(self.url + "/"))
        if re.fullmatch(r"/v1/projects/[^/]+/algorithms", url.path):
            self._count("algorithms")
            return self._json(h, {"algorithms": ALGORITHMS})
        m = re.fullmatch(r"/v1/projects/[^/]+/assets/(.+):listAssets", url.path)
        if m:
            self._count("listAssets")
            flt = parse_filter(parse_qs(url.query).get("filter", [""])[0])
            parent = m.group(1)
            images = [{"type": "IMAGE", "id": iid, "name": f"projects/earthengine-public/assets/{iid}",
                       "startTime": f"{FAKE_IMAGES[iid].date}T17:30:00Z",
                       "geometry": shapely.geometry.mapping(footprint_lonlat(FAKE_IMAGES[iid].scene, FAKE_IMAGES[iid].tiles)),
                       "properties": {"CLOUD_COVER": FAKE_IMAGES[iid].cloud},
                       "bands": [{"id": b, "dataType": {"precision": precision}, "grid": _grid(FAKE_IMAGES[iid])}
                                 for b, precision in _band_listing(FAKE_IMAGES[iid])]}
                      for iid in sorted(FAKE_IMAGES) if iid.startswith(parent + "/") and _match(iid, flt)]
            return self._json(h, {"assets": json.loads(json.dumps(images))})
        self._error(h, 404, f"fake Earth Engine has no GET {url.path}")

    def _post(self, h) -> None:
        url = urlparse(h.path)
        body = h.rfile.read(int(h.headers.get("Content-Length", 0) or 0))
        if url.path == "/token":
            self._count("token")
            return self._json(h, {"access_token": "fake-token", "expires_in": 3600, "token_type": "Bearer"})
        if not re.fullmatch(r"/v1/projects/[^/]+/image:computePixels", url.path):
            return self._error(h, 404, f"fake Earth Engine has no POST {url.path}")
        self._count("computePixels")
        with self.lock:
            self.auth_headers.append(h.headers.get("Authorization", ""))
        refused = self._admit()
        if refused == "concurrency":
            return self._error(h, 429, "Too many concurrent aggregations.")
        if refused == "rate":
            return self._error(h, 429, f"Too Many Requests: more than {self.max_requests_per_s:g} requests per second "
                                       "for this project.")
        with self.lock:
            fault = self.faults.popleft() if self.faults else self.always
        t0 = time.perf_counter()
        try:
            if self.hold is not None:
                self.hold.wait(600)  # a hang guard only: the test sets it
                t0 = time.perf_counter()
            if fault in ("429", "503"):
                time.sleep(self.latency_s)
                return self._error(h, int(fault), "Too many concurrent aggregations." if fault == "429"
                                   else "Service unavailable.")
            if fault == "timeout":
                time.sleep(self.timeout_sleep_s)
            try:
                payload, ctype = self._compute_pixels(json.loads(body), fault)
            except RequestError as exc:
                return self._error(h, exc.status, str(exc))
            except (KeyError, TypeError, ValueError) as exc:
                return self._error(h, 400, f"Invalid request: {type(exc).__name__}: {exc}")
            # latency_s = the whole server-side time of a request (rendering included)
            time.sleep(max(0.0, self.latency_s - (time.perf_counter() - t0)))
            self._send(h, 200, payload, ctype, truncate=fault == "truncated")
        finally:
            with self.lock:
                self.in_flight -= 1

    def _compute_pixels(self, req: dict, fault: str | None) -> tuple[list, str]:
        expression, asset = _asset_free(req["expression"])
        if asset not in FAKE_IMAGES:
            raise RequestError(404, f"Image asset '{asset}' not found.")
        fmt = req.get("fileFormat", "NPY")
        if fmt not in ("NPY", "GEO_TIFF"):
            raise RequestError(400, f"fake server serves fileFormat NPY and GEO_TIFF, not {fmt}")
        dims = req["grid"]["dimensions"]
        scene, _ = evaluated_scene(FAKE_IMAGES[asset].look, expression)
        size = int(dims["width"]) * int(dims["height"]) * sum(scene.dtype[k].itemsize + 1 for k in scene.dtype.names)
        if size > self.max_request_bytes:
            with self.lock:
                self.rejected["size"] += 1
            raise RequestError(400, f"Total request size ({size} bytes) must be less than or equal to "
                                    f"{self.max_request_bytes} bytes.")
        with self.lock:
            self.formats[fmt] = self.formats.get(fmt, 0) + 1
            self.max_pixels = max(self.max_pixels, int(dims["width"]) * int(dims["height"]))
        if fault == "garbage":
            return [b"this is not an NPY file" * 64], "application/octet-stream"
        image = FAKE_IMAGES[asset]
        key = (image.look, image.tiles, expression, json.dumps(req["grid"], sort_keys=True), fmt)
        with self.lock:
            if key in self._answers and fault is None:
                self._answers.move_to_end(key)
                return self._answers[key]
        arr = render(asset, expression, req["grid"])
        if fault == "wrong_shape":
            arr = arr[: max(1, arr.shape[0] // 2)]
        answer = ([geotiff_bytes(arr, req["grid"])], "image/tiff") if fmt == "GEO_TIFF" else \
            (npy_bytes(arr), "application/octet-stream")
        if fault is None and self.cache_bytes:
            with self.lock:
                self._answers[key] = answer
                self._cached += sum(len(part) for part in answer[0])
                while self._cached > self.cache_bytes:
                    self._cached -= sum(len(part) for part in self._answers.popitem(last=False)[1][0])
        return answer


def add_bench_images(n: int, scenes: dict[str, int]) -> list[str]:
    """Add ``n`` more fake images (dates) over ``scenes`` (bundled scene -> tiles; round robin), each
    ``tiles`` x ``tiles`` copies of its scene; returns their ids."""
    ids = []
    names = list(scenes)
    for k in range(n):
        iid = f"{COLLECTION}/BENCH_{k:04d}"
        scene = names[k % len(names)]
        day = k // len(names)
        FAKE_IMAGES[iid] = FakeImage(scene, f"{2000 + day // 336}-{1 + day // 28 % 12:02d}-{1 + day % 28:02d}", 1.0,
                                     scenes[scene])
        ids.append(iid)
    return ids


def main() -> None:
    """Run the fake server in its own process (the benchmarks do, so that the server's numpy work
    does not share a GIL with the client): prints its URL, serves until killed."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--max-concurrent", type=int, default=40)
    ap.add_argument("--max-rate", type=float, default=100.0, help="accepted requests per second")
    ap.add_argument("--extra-dates", type=int, default=0, help="add N more fake images (dates) of the scenes")
    ap.add_argument("--cache-mb", type=int, default=0, help="keep answers to identical requests (MiB)")
    ap.add_argument("--scenes", default="", help="SCENE:TILES,... bundled scenes of the extra images and how many "
                                                 "copies of the scene each spans along an axis")
    args = ap.parse_args()
    scenes = ({name: int(tiles or 1) for name, _, tiles in (item.partition(":") for item in args.scenes.split(","))}
              if args.scenes else {v.scene: 1 for v in FAKE_IMAGES.values()})
    add_bench_images(args.extra_dates, scenes)
    for scene, tiles in scenes.items():  # warm the scene caches before announcing the URL
        footprint_lonlat(scene, tiles)
        _source_bands(scene)
    with FakeEarthEngine(latency_s=args.latency, max_concurrent=args.max_concurrent,
                         max_requests_per_s=args.max_rate, cache_bytes=args.cache_mb * 2**20) as fake:
        print(fake.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
