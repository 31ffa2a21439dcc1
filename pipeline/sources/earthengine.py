"""Earth Engine source on the genuine earthengine-api: ``ee.data.computePixels`` per block of patches.

* Expression (TOA, default): ``Image(asset).select([B3, B2, B1]).multiply(10000).round().toUint16()
  .addBands(Image(asset).select(["QA_PIXEL"]))``: Earth Engine scales the float TOA reflectance to
  uint16 x 10^4 itself (rounding halves away from zero), so every band travels as 2 bytes a pixel;
  SR (Collection 2 L2): ``select([SR_B3, SR_B2, SR_B1, QA_PIXEL])``, uint16 already. Grid =
  ``{dimensions, affineTransform, crsCode}`` in the scene's own UTM grid (EPSG:326xx/327xx), 30 m.
* Blocks: planning groups each scene's 256 x 256 cells (inside AOI and footprint) into blocks of
  ``config.block_shape`` = (rows, cols) cells, anchored at the cells' upper-left corner; every block
  keeps all rows x cols cells, those outside AOI or footprint planned as ``outside`` rows (never
  fetched), so shards hold whole blocks. A block is fetched with ONE request (the window around
  its inside cells), cut into patches, and each patch is kept or skipped on its own: QA fill or
  empty bands -> "nodata", cloud/shadow/dilated cloud -> "clouds" (thresholds from the config).
  ``block_patches=(1, 1)`` fetches one patch per request (sparse sampling).
* Request size: blocks stay under Earth Engine's 48 MiB (``ExportConfig.request_bytes``); should
  Earth Engine still answer ``Total request size ...`` (400), the window is split in two and each
  half requested (a single patch over the limit fails with that message).
* Formats: ``NUMPY_NDARRAY`` (fetched as NPY, read without copying) or ``GEO_TIFF`` (rasterio):
  the same pixels either way.
* Scenes: ``ee.data.listImages`` over each AOI and the date window, CLOUD_COVER filtered.
* References (``config.references`` = R > 0): planning lists every Landsat collection of the product
  (:data:`REFERENCE_COLLECTIONS`: Landsat 5, 7, 8, 9; same CLOUD_COVER filter) over each AOI within
  ``reference_window_days`` of the AOI's target dates; each target image's requests carry its candidates
  (other images whose band grid is in the target's CRS, ``0 < |days| <= window``, nearest first, at most
  4 R) in the plan, so a resume fetches the same ones. At fetch time a block's candidates are requested
  in that order over the SAME window as the block (one computePixels per block and candidate, under the
  same semaphore, pacing and retries), until every kept patch holds R references: a candidate is taken
  for a patch when at least ``reference_min_valid`` of it is clear by its QA_PIXEL (no fill, cloud,
  dilated cloud or shadow, bands not empty). Band mapping (red, green, blue): ETM+ / TM B3, B2, B1 =
  OLI B4, B3, B2 (SR: the SR_ bands of the same numbers); TOA scaled x 10^4 to uint16 for every sensor.
* Auth (headless): service-account JSON key from ``config.key`` / ``$EDGEFILL_EE_KEY`` /
  ``$GOOGLE_APPLICATION_CREDENTIALS`` -> ``ee.ServiceAccountCredentials``; the key is never
  logged nor written anywhere. Endpoint: ``api_url``, else the high-volume one with ``high_volume``,
  else the standard one, always passed explicitly to ``ee.Initialize``.
* Concurrency: one thread pool per source; a semaphore keeps at most ``concurrency`` (<= 40)
  requests on the wire while other threads decode and cut finished responses, and request starts
  are paced to ``max_requests_per_s`` (< Earth Engine's 100/s per project).
* Retries: only transport failures (dropped connections, timeouts, truncated bodies) and HTTP
  429 / 5xx, with exponential backoff + jitter, up to ``max_attempts``, then
  :class:`EarthEngineError`. Any other Earth Engine error fails at once; a malformed response
  (:class:`MalformedResponse`) fails at once naming what was wrong; our own errors propagate.
"""
from __future__ import annotations

import functools
import http.client
import io
import json
import os
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import shapely.geometry

from pipeline.aoi import AOI, assign_splits, grid_cells, read_aois, to_utm, utm_epsg
from pipeline.export_config import HIGH_VOLUME_URL, STANDARD_URL, ExportConfig, ExportError
from pipeline.qa import qa_cloud_mask
from pipeline.sampling import group_blocks, interleave
import datetime as dt

from pipeline.sources.base import Patch, PatchRequest, Reference, ReferenceCandidate, SourceError
from pipeline.store import Radiometry

KEY_ENV_VARS = ("EDGEFILL_EE_KEY", "GOOGLE_APPLICATION_CREDENTIALS")
PIXEL_M = 30.0
RETRY_STATUSES = {429, 500, 502, 503, 504}
TOA_SCALE = 10000
#: Collections searched for reference acquisitions, per product, and the red/green/blue bands of each sensor.
REFERENCE_COLLECTIONS = {
    "toa": ["LANDSAT/LT05/C02/T1_TOA", "LANDSAT/LE07/C02/T1_TOA", "LANDSAT/LC08/C02/T1_TOA", "LANDSAT/LC09/C02/T1_TOA"],
    "sr": ["LANDSAT/LT05/C02/T1_L2", "LANDSAT/LE07/C02/T1_L2", "LANDSAT/LC08/C02/T1_L2", "LANDSAT/LC09/C02/T1_L2"],
}
RGB_BANDS = {"LT05": ["B3", "B2", "B1"], "LE07": ["B3", "B2", "B1"], "LC08": ["B4", "B3", "B2"], "LC09": ["B4", "B3", "B2"]}


def rgb_band_ids(sensor: str, product: str) -> list[str]:
    """Red, green, blue band ids of a Landsat sensor (ETM+/TM B3 B2 B1 = OLI B4 B3 B2), SR: ``SR_`` prefixed."""
    if sensor not in RGB_BANDS:
        raise ExportError(f"no band mapping for Landsat sensor {sensor!r}; known: {sorted(RGB_BANDS)}")
    return [("SR_" if product == "sr" else "") + b for b in RGB_BANDS[sensor]]
_INIT_LOCK = threading.Lock()


class EarthEngineError(SourceError):
    """Earth Engine refused or kept failing (message says what and how often)."""


class MalformedResponse(EarthEngineError):
    """computePixels answered with a body that is not the pixels asked for (never retried)."""


class RequestTooLarge(EarthEngineError):
    """Earth Engine refused a request over its size limit (HTTP 400 ``Total request size ...``)."""


def resolve_key(config: ExportConfig) -> Path:
    """The service-account key path: config, then $EDGEFILL_EE_KEY, then $GOOGLE_APPLICATION_CREDENTIALS."""
    candidates = [("--key / config.key", config.key)] + [(f"${v}", os.environ.get(v)) for v in KEY_ENV_VARS]
    for origin, value in candidates:
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise EarthEngineError(f"Earth Engine service-account key from {origin} does not exist: {path}")
            return path
    raise EarthEngineError(
        "Earth Engine credentials missing: pass --key KEY.json (config.key) or set EDGEFILL_EE_KEY or "
        "GOOGLE_APPLICATION_CREDENTIALS to a service-account JSON key, and pass --project PROJECT")


def _status_of(exc: BaseException) -> int | None:
    """HTTP status behind an ee exception (the client keeps the HttpError as __context__)."""
    for err in (exc, exc.__cause__, exc.__context__):
        resp = getattr(err, "resp", None)
        if resp is not None and getattr(resp, "status", None):
            return int(resp.status)
    return None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Exceptions of a connection that failed, timed out or delivered a truncated body."""
    import requests
    import urllib3

    return (ConnectionError, TimeoutError, http.client.HTTPException, requests.exceptions.ConnectionError,
            requests.exceptions.Timeout, requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError, urllib3.exceptions.ProtocolError,
            urllib3.exceptions.TimeoutError)


def is_retryable(exc: BaseException) -> bool:
    """Transient: HTTP 429 / 5xx answers and transport failures (see :func:`_transport_errors`).
    Never: other Earth Engine errors, our own classified errors, malformed bodies, programming errors."""
    import ee

    if isinstance(exc, EarthEngineError):
        return False
    if isinstance(exc, ee.EEException):
        return _status_of(exc) in RETRY_STATUSES or "Too Many Requests" in str(exc)
    return isinstance(exc, _transport_errors())


def describe(exc: BaseException) -> str:
    status = _status_of(exc)
    return f"{type(exc).__name__}{f' (HTTP {status})' if status else ''}: {str(exc)[:300]}"


def with_retries(call: Callable[[], Any], what: str, *, max_attempts: int, backoff_s: float,
                 sleep: Callable[[float], None] = time.sleep) -> Any:
    """Run ``call``; retry transient errors with delay ``backoff_s * 2**i * U(0.5, 1.5)``. A non-retryable
    Earth Engine error becomes :class:`EarthEngineError` at once; our own :class:`EarthEngineError`
    subclasses and any other exception (a bug) propagate unchanged."""
    import ee

    last: BaseException | None = None
    for attempt in range(max_attempts):
        try:
            return call()
        except Exception as exc:  # classified below
            if not is_retryable(exc):
                if isinstance(exc, ee.EEException):
                    raise EarthEngineError(f"{what} failed (not retryable): {describe(exc)}") from exc
                raise
            last = exc
            if attempt + 1 < max_attempts:
                sleep(backoff_s * (2 ** attempt) * random.uniform(0.5, 1.5))
    raise EarthEngineError(f"{what} failed after {max_attempts} attempts; last error: {describe(last)}") from last


@functools.lru_cache(maxsize=1)
def _whole_body_adapter() -> type:
    """A requests ``HTTPAdapter`` that reads each response body in ONE call (requests' own
    ``Response.content`` reads 10 KB at a time: ~90 ms of Python CPU per 32 MiB block, 4x this).
    Read failures map to the requests exceptions the earthengine-api client turns into
    ConnectionError / TimeoutError, as they would on requests' own read."""
    import requests
    import urllib3

    class WholeBodyAdapter(requests.adapters.HTTPAdapter):
        def build_response(self, req, resp):
            response = super().build_response(req, resp)
            try:
                body = resp.read(decode_content=True)
            except urllib3.exceptions.ReadTimeoutError as exc:
                raise requests.exceptions.ReadTimeout(exc, request=req) from exc
            except urllib3.exceptions.DecodeError as exc:
                raise requests.exceptions.ContentDecodingError(exc, request=req) from exc
            except (urllib3.exceptions.ProtocolError, urllib3.exceptions.SSLError) as exc:
                raise requests.exceptions.ChunkedEncodingError(exc, request=req) from exc
            response._content, response._content_consumed = body, True  # what Response.content would cache
            return response

    return WholeBodyAdapter


# -- responses ------------------------------------------------------------------------------

def _decode_npy(data: bytes, names: list[str]) -> dict[str, np.ndarray]:
    """Band arrays of an NPY body (structured array, one field per band), viewing ``data`` (no copy)."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"NPY format version {version}")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(buf)
    except ValueError as exc:
        raise MalformedResponse(f"computePixels returned a body that is not NPY ({exc})") from None
    missing = [n for n in names if dtype.names is None or n not in dtype.names]
    if missing or len(shape) != 2:
        raise MalformedResponse(f"computePixels returned an NPY array {shape} of {dtype} without bands {missing}")
    count = int(np.prod(shape))
    if len(data) - buf.tell() != count * dtype.itemsize:
        raise MalformedResponse(f"computePixels returned {len(data) - buf.tell()} NPY data bytes for "
                                f"{count * dtype.itemsize} announced")
    arr = np.frombuffer(data, dtype, count, offset=buf.tell()).reshape(shape, order="F" if fortran else "C")
    return {n: arr[n] for n in names}


def _decode_geotiff(data: bytes, names: list[str]) -> dict[str, np.ndarray]:
    """Band arrays of a GeoTIFF body: bands by description (Earth Engine's band names), else in request order."""
    from rasterio.errors import RasterioError
    from rasterio.io import MemoryFile

    try:
        with MemoryFile(data) as mem, mem.open() as ds:
            stack, described = ds.read(), ds.descriptions
    except RasterioError as exc:
        raise MalformedResponse(f"computePixels returned a body that is not a GeoTIFF ({exc})") from None
    order = list(described) if all(described) else names
    if len(stack) != len(names) or sorted(order) != sorted(names):
        raise MalformedResponse(f"computePixels returned a GeoTIFF of bands {order}, expected {names}")
    return {n: stack[order.index(n)] for n in names}


def _as_uint16(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint16:
        return arr
    if arr.dtype.kind in "iuf" and np.all((arr >= 0) & (arr <= 65535) & (arr == np.floor(arr))):
        return arr.astype(np.uint16)
    raise MalformedResponse(f"computePixels returned band {name} as {arr.dtype} with values outside uint16")


def decode_pixels(data: Any, file_format: str, names: list[str], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Band name -> uint16 (height, width) array of a computePixels answer; :class:`MalformedResponse`
    for anything else than ``shape`` pixels of every band in ``names``."""
    if not isinstance(data, (bytes, bytearray)):
        raise MalformedResponse(f"computePixels returned {type(data).__name__}, expected {file_format} bytes")
    arrays = _decode_geotiff(data, names) if file_format == "GEO_TIFF" else _decode_npy(bytes(data), names)
    for name, arr in arrays.items():
        if arr.shape != shape:
            raise MalformedResponse(f"computePixels returned band {name} of shape {arr.shape}, expected {shape}")
    return {name: _as_uint16(name, arr) for name, arr in arrays.items()}


@dataclass(frozen=True)
class Window:
    """The pixel grid one request covers: upper-left corner ``(x0, y0)`` (metres), pixel size
    ``(a, e)`` (metres, e < 0: north-up), ``height`` x ``width`` pixels."""

    asset: str
    epsg: int
    x0: float
    y0: float
    a: float
    e: float
    height: int
    width: int

    @classmethod
    def around(cls, reqs: list[PatchRequest]) -> "Window":
        """The smallest window holding every request's patch (same asset, CRS and pixel grid)."""
        a, _, _, _, e, _ = reqs[0].transform
        if any((r.asset, r.epsg, r.transform[0], r.transform[4]) != (reqs[0].asset, reqs[0].epsg, a, e) for r in reqs):
            raise ExportError("a block mixes assets, CRSs or pixel sizes")
        x0, y0 = min(r.transform[2] for r in reqs), max(r.transform[5] for r in reqs)
        win = cls(reqs[0].asset, reqs[0].epsg, x0, y0, a, e, 0, 0)
        rows, cols = zip(*(win.offset(r) for r in reqs))
        size = reqs[0].size
        return cls(win.asset, win.epsg, x0, y0, a, e, max(rows) + size, max(cols) + size)

    def offset(self, req: PatchRequest) -> tuple[int, int]:
        """(row, col) pixel of ``req``'s upper-left corner in this window."""
        return int(round((req.transform[5] - self.y0) / self.e)), int(round((req.transform[2] - self.x0) / self.a))

    def grid(self) -> dict:
        return {"dimensions": {"width": self.width, "height": self.height},
                "affineTransform": {"scaleX": self.a, "shearX": 0.0, "translateX": self.x0,
                                    "shearY": 0.0, "scaleY": self.e, "translateY": self.y0},
                "crsCode": f"EPSG:{self.epsg}"}

    def describe(self) -> str:
        return f"{self.asset} window {self.width}x{self.height} px at {self.x0:.0f},{self.y0:.0f} (EPSG:{self.epsg})"


def _top_left(cells: list[tuple[float, float]]) -> tuple[float, float]:
    """Upper-left corner of the cells' bounding grid: blocks start there, so the fewest are partial."""
    return (min(x for x, _ in cells), max(y for _, y in cells)) if cells else (0.0, 0.0)


@functools.lru_cache(maxsize=1)
def cloud_lookup() -> np.ndarray:
    """:func:`pipeline.qa.qa_cloud_mask` (cloud, dilated cloud, shadow) of every uint16 QA_PIXEL value:
    one table lookup a pixel instead of decoding its bits."""
    return qa_cloud_mask(np.arange(65536, dtype=np.uint16), "c2_qa_pixel", shadow=True, fill=False)


def band_stack(bands: list[np.ndarray]) -> np.ndarray:
    """(bands, H, W) of equally shaped band arrays, read-only: a view when they lie evenly spaced in one
    buffer (the fields of an NPY record array, in order), else a copy."""
    first = bands[0]
    if all(b.shape == first.shape and b.strides == first.strides and np.may_share_memory(first, b) for b in bands[1:]):
        addresses = [b.__array_interface__["data"][0] for b in bands]
        steps = {after - before for before, after in zip(addresses, addresses[1:])}
        if len(steps) == 1:
            return np.lib.stride_tricks.as_strided(first, (len(bands), *first.shape), (steps.pop(), *first.strides),
                                                   writeable=False)
    return np.stack(bands)


def _halves(win: Window, reqs: list[PatchRequest]) -> tuple[list[int], list[int]]:
    """Indices of ``reqs`` split in two along the window's longer side (rows first when square)."""
    offsets = [win.offset(r) for r in reqs]
    rows, cols = sorted({o[0] for o in offsets}), sorted({o[1] for o in offsets})
    axis = 0 if len(rows) > 1 and (win.height >= win.width or len(cols) == 1) else 1
    cut = (rows if axis == 0 else cols)[len(rows if axis == 0 else cols) // 2]
    first = [i for i, o in enumerate(offsets) if o[axis] < cut]
    return first, [i for i, o in enumerate(offsets) if o[axis] >= cut]


class EarthEngineSource:
    """Patches from an Earth Engine Landsat 7 collection (see module docstring)."""

    name = "earthengine"

    def __init__(self, config: ExportConfig, credentials: Any | None = None):
        if config.source != "earthengine":
            raise ExportError("EarthEngineSource needs config.source='earthengine'")
        self.config = config
        self.bands = ["red", "green", "blue"]
        if config.product == "toa":
            self.radiometry = Radiometry(dtype="uint16", scale=1e-4, offset=0.0,
                                         description="TOA reflectance x 10000 (rounded by Earth Engine)")
        else:
            self.radiometry = Radiometry(dtype="uint16", scale=2.75e-05, offset=-0.2,
                                         description="Collection 2 L2 surface reflectance DN (raw)")
        self._credentials = credentials
        self._in_flight = threading.BoundedSemaphore(config.concurrency)
        self._pace_lock = threading.Lock()
        self._next_start = 0.0
        self._pool: ThreadPoolExecutor | None = None
        self._initialized = False

    # -- session ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The endpoint, always explicit: the client keeps a previous ``Initialize``'s URL when given none."""
        return self.config.api_url or (HIGH_VOLUME_URL if self.config.high_volume else STANDARD_URL)

    def initialize(self) -> None:
        """``ee.Initialize`` once (credentials, project, endpoint); clear errors otherwise."""
        if self._initialized:
            return
        import ee

        if not self.config.project:
            raise EarthEngineError("Earth Engine needs a Cloud project: pass --project PROJECT (config.project)")
        credentials = self._credentials
        if credentials is None:
            key = resolve_key(self.config)
            try:
                credentials = ee.ServiceAccountCredentials(None, key_file=str(key))
            except Exception as exc:  # never echo the key's content
                raise EarthEngineError(f"service-account key {key} is not a valid JSON key "
                                       f"({type(exc).__name__})") from None
        with _INIT_LOCK:
            ee.data.setMaxRetries(0)  # retries are ours (bounded, with jitter)
            deadline_ms = int(self.config.timeout_s * 1000)
            state = ee.data._get_state()  # noqa: SLF001 - deadline before Initialize: one discovery, not two
            state.deadline_ms = deadline_ms
            try:
                ee.Initialize(credentials=credentials, project=self.config.project, opt_url=self.url)
                if ee.data._get_state().deadline_ms != deadline_ms:  # noqa: SLF001
                    ee.data.setDeadline(deadline_ms)
            except Exception as exc:
                raise EarthEngineError(f"cannot initialize Earth Engine at {self.url}: {type(exc).__name__}: "
                                       f"{str(exc)[:300]}") from exc
            session = ee.data._get_state().requests_session  # noqa: SLF001 - connection pool sized to concurrency
            if session is not None:
                adapter = _whole_body_adapter()(pool_connections=4, pool_maxsize=self.config.concurrency + 8)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
        self._initialized = True

    # -- planning -----------------------------------------------------------------------
    def list_scenes(self, aoi: AOI, collection: str | None = None, start: str | None = None,
                    end: str | None = None) -> list[dict]:
        """Images of the collection (default: the export's) over ``aoi`` in the date window (default: the
        export's) with CLOUD_COVER below the limit."""
        import ee

        self.initialize()
        c = self.config
        collection, start, end = collection or c.collection, start or c.start, end or c.end
        params = {"parent": collection, "startTime": f"{start}T00:00:00Z", "endTime": f"{end}T00:00:00Z",
                  "region": json.dumps(shapely.geometry.mapping(aoi.geometry)),
                  "properties": [f"CLOUD_COVER < {c.max_scene_cloud_cover}"]}
        result = with_retries(lambda: ee.data.listImages(dict(params)), f"listImages over AOI {aoi.name}",
                              max_attempts=c.max_attempts, backoff_s=c.backoff_s)
        return sorted(result.get("images", []), key=lambda im: im.get("id", im.get("name", "")))

    def strata(self) -> list[list[list[PatchRequest]]]:
        """Blocks per AOI: every scene's 256 x 256 cells inside AOI and footprint grouped into
        ``block_shape`` blocks (cells outside planned as ``outside``), blocks in a seeded shuffle,
        interleaved across the AOI's scenes."""
        c = self.config
        aois = read_aois(c.aoi_files())
        splits = assign_splits(aois, c.seed, c.test_fraction, c.validation_fraction)
        shape = c.block_shape
        out: list[list[list[PatchRequest]]] = []
        n_scenes = 0
        self.initialize()
        with ThreadPoolExecutor(min(8, len(aois))) as pool:  # list every AOI's scenes concurrently
            listings = list(pool.map(self.list_scenes, aois))
            candidates = (list(pool.map(self._reference_listing, aois, listings)) if c.references
                          else [[] for _ in aois])
        for aoi, images, others in zip(aois, listings, candidates):
            per_scene = []
            for image in images:
                asset = image.get("id") or image["name"].split("/assets/", 1)[-1]
                region = aoi.geometry
                if image.get("geometry"):
                    region = region.intersection(shapely.geometry.shape(image["geometry"]))
                if region.is_empty:
                    continue
                n_scenes += 1
                epsg, origin = self._native_grid(image, region)
                scene_id = asset.rsplit("/", 1)[-1]
                cells = grid_cells(to_utm(region, epsg), PIXEL_M, c.patch_size, origin)
                references = self._reference_candidates(asset, str(image.get("startTime", ""))[:10], epsg, others)
                blocks = [[PatchRequest(asset=asset, scene_id=scene_id, epsg=epsg, references=references,
                                        transform=(PIXEL_M, 0.0, x, 0.0, -PIXEL_M, y), size=c.patch_size,
                                        acquired=str(image.get("startTime", ""))[:10], sensor=scene_id[:4],
                                        split=splits[aoi.name], stratum=aoi.name,
                                        block=key if shape != (1, 1) else "", outside=not inside)
                           for x, y, inside in block]
                          for key, block in group_blocks(cells, _top_left(cells), PIXEL_M * c.patch_size, shape)]
                random.Random(f"{c.seed}:{aoi.name}:{asset}").shuffle(blocks)
                per_scene.append(blocks)
            out.append(interleave(per_scene, c.seed))
        if n_scenes == 0:
            raise ExportError(f"no scenes in {c.collection} between {c.start} and {c.end} with CLOUD_COVER < "
                              f"{c.max_scene_cloud_cover} over AOIs {[a.name for a in aois]}")
        return out

    def _reference_listing(self, aoi: AOI, targets: list[dict]) -> list[dict]:
        """Every Landsat image (all :data:`REFERENCE_COLLECTIONS` of the product) over ``aoi`` within the
        reference window of the AOI's target dates."""
        dates = [dt.date.fromisoformat(str(im.get("startTime", ""))[:10]) for im in targets if im.get("startTime")]
        if not dates:
            return []
        window = dt.timedelta(days=self.config.reference_window_days)
        start, end = str(min(dates) - window), str(max(dates) + window + dt.timedelta(days=1))
        return [im for coll in REFERENCE_COLLECTIONS[self.config.product]
                for im in self.list_scenes(aoi, coll, start, end)]

    def _reference_candidates(self, asset: str, acquired: str, epsg: int,
                              images: list[dict]) -> tuple[ReferenceCandidate, ...]:
        """Candidates of a target image: other images in its CRS, ``0 < |days| <= window``, nearest first
        (ties: earlier, then id), at most 4 R."""
        if not self.config.references or not acquired:
            return ()
        target = dt.date.fromisoformat(acquired)
        found = []
        for image in images:
            other = image.get("id") or image["name"].split("/assets/", 1)[-1]
            when = str(image.get("startTime", ""))[:10]
            sensor = other.rsplit("/", 1)[-1][:4]
            if other == asset or not when or sensor not in RGB_BANDS:
                continue
            days = abs((dt.date.fromisoformat(when) - target).days)
            crs = {str((b.get("grid") or {}).get("crsCode", "")).upper() for b in image.get("bands", []) or []} - {""}
            if not 0 < days <= self.config.reference_window_days or (crs and f"EPSG:{epsg}" not in crs):
                continue
            found.append((days, when, other, sensor))
        found.sort()
        return tuple(ReferenceCandidate(asset=a, acquired=w, sensor=s) for _, w, a, s in found[:4 * self.config.references])

    def _native_grid(self, image: dict, region) -> tuple[int, tuple[float, float]]:
        """CRS + grid origin of the image's first requested band (no resampling), else the UTM zone
        of the region's centroid on a 30 m grid anchored at 0."""
        for band in image.get("bands", []) or []:
            grid = band.get("grid") or {}
            crs = str(grid.get("crsCode", ""))
            if band.get("id") in self.config.band_ids and crs.upper().startswith("EPSG:"):
                at = grid.get("affineTransform", {})
                return int(crs.split(":")[1]), (float(at.get("translateX", 0.0)), float(at.get("translateY", 0.0)))
        return utm_epsg(region.centroid.x, region.centroid.y), (0.0, 0.0)

    # -- pixels -------------------------------------------------------------------------
    def _expression(self, asset: str, band_ids: list[str] | None = None) -> Any:
        import ee

        image = ee.Image(asset)
        band_ids = band_ids or self.config.band_ids
        if self.config.product == "toa":  # Earth Engine scales float TOA to uint16 x 10^4: 2 bytes a band
            return (image.select(band_ids).multiply(TOA_SCALE).round().toUint16()
                    .addBands(image.select(["QA_PIXEL"])))
        return image.select(band_ids + ["QA_PIXEL"])

    def _window_params(self, win: Window, band_ids: list[str] | None = None) -> dict:
        return {"expression": self._expression(win.asset, band_ids),
                "fileFormat": "GEO_TIFF" if self.config.file_format == "GEO_TIFF" else "NPY",
                "grid": win.grid()}

    def _params(self, req: PatchRequest) -> dict:
        """computePixels parameters of one patch."""
        return self._window_params(Window.around([req]))

    def _pace(self) -> None:
        """Space request starts at least ``1 / max_requests_per_s`` apart (GEE: 100 requests/s)."""
        with self._pace_lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + 1.0 / self.config.max_requests_per_s
        if start > now:
            time.sleep(start - now)

    def _compute(self, win: Window, band_ids: list[str] | None = None) -> dict[str, np.ndarray]:
        """One computePixels request for ``win`` (bands ``band_ids``, default the export's, + QA_PIXEL):
        band name -> uint16 (height, width) array."""
        import ee

        band_ids = band_ids or self.config.band_ids
        params = self._window_params(win, band_ids)
        self._pace()
        try:
            with self._in_flight:  # at most ``concurrency`` requests on the wire; decoding happens outside
                data = ee.data.computePixels(params)
        except ee.EEException as exc:
            if _status_of(exc) == 400 and "Total request size" in str(exc):
                raise RequestTooLarge(f"computePixels for {win.describe()} refused: {str(exc)[:300]}") from exc
            raise
        return decode_pixels(data, self.config.file_format, band_ids + ["QA_PIXEL"], (win.height, win.width))

    def _cut(self, win: Window, arrays: dict[str, np.ndarray], reqs: list[PatchRequest]) -> list[Patch]:
        """Each request's patch out of the window, kept or skipped on its own (nodata, clouds)."""
        c = self.config
        p = c.patch_size
        qa = arrays["QA_PIXEL"]
        bands = [arrays[n] for n in c.band_ids]
        pixels = band_stack(bands)
        missing = (qa & 1).astype(bool)
        missing |= (bands[0] | bands[1] | bands[2]) == 0
        clouds = cloud_lookup()[qa]
        out = []
        for req in reqs:
            row, col = win.offset(req)
            cell = (slice(row, row + p), slice(col, col + p))
            missing_fraction = np.count_nonzero(missing[cell]) / (p * p)
            if missing_fraction > c.max_nodata:
                out.append(Patch(req, None, "nodata", missing_fraction))
            elif np.count_nonzero(clouds[cell]) / (p * p) > c.max_cloud_fraction:
                out.append(Patch(req, None, "clouds", missing_fraction))
            else:
                # a view into the window: its one copy is into the shard being written
                out.append(Patch(req, pixels[(slice(None), *cell)], None, missing_fraction))
        return out

    def fetch_block(self, reqs: list[PatchRequest]) -> list[Patch]:
        """Fetch the patches of one block (requests inside AOI and footprint, same asset and grid) with
        one request; a window Earth Engine finds too large is split in two and each half fetched."""
        self.initialize()
        c = self.config
        win = Window.around(reqs)
        try:
            arrays = with_retries(lambda: self._compute(win), f"computePixels for {win.describe()}",
                                  max_attempts=c.max_attempts, backoff_s=c.backoff_s)
        except RequestTooLarge:
            if len(reqs) == 1:
                raise
            out: list[Patch | None] = [None] * len(reqs)
            for half in _halves(win, reqs):
                for i, patch in zip(half, self.fetch_block([reqs[i] for i in half])):
                    out[i] = patch
            return out  # type: ignore[return-value]
        patches = self._cut(win, arrays, reqs)
        if c.references:
            self._add_references(win, reqs, patches)
        return patches

    def _add_references(self, win: Window, reqs: list[PatchRequest], patches: list[Patch]) -> None:
        """Fill the kept patches' references: the block's candidates over the same window, nearest first,
        until each kept patch has R clear ones (see the module docstring)."""
        c = self.config
        p, want = c.patch_size, c.references
        kept = [i for i, patch in enumerate(patches) if patch.skip is None]
        if any(r.references != reqs[0].references for r in reqs):
            raise ExportError("a block mixes reference candidates")
        for cand in reqs[0].references:
            need = [i for i in kept if len(patches[i].references) < want]
            if not need:
                return
            band_ids = rgb_band_ids(cand.sensor, c.product)
            ref_win = Window(cand.asset, win.epsg, win.x0, win.y0, win.a, win.e, win.height, win.width)
            arrays = with_retries(lambda: self._compute(ref_win, band_ids),
                                  f"computePixels (reference) for {ref_win.describe()}",
                                  max_attempts=c.max_attempts, backoff_s=c.backoff_s)
            qa = arrays["QA_PIXEL"]
            bands = [arrays[n] for n in band_ids]
            valid = ~(qa & 1).astype(bool)
            valid &= (bands[0] | bands[1] | bands[2]) != 0
            valid &= ~cloud_lookup()[qa]
            pixels = band_stack(bands)
            for i in need:
                row, col = win.offset(reqs[i])
                cell = (slice(row, row + p), slice(col, col + p))
                cell_valid = valid[cell]
                if np.count_nonzero(cell_valid) / (p * p) >= c.reference_min_valid and cell_valid.any():
                    patches[i].references.append(Reference(
                        pixels=np.array(pixels[(slice(None), *cell)]), valid=cell_valid.copy(),
                        acquired=cand.acquired, sensor=cand.sensor, scene_id=cand.asset.rsplit("/", 1)[-1]))

    def fetch(self, req: PatchRequest) -> Patch:
        if req.outside:
            return Patch(req, None, "outside")
        return self.fetch_block([req])[0]

    def fetch_many(self, requests: list[PatchRequest]) -> list[Patch]:
        """One request per block (per patch where ``block`` is empty), concurrently on the source's pool
        (a single block on the calling thread); at most ``concurrency`` requests on the wire;
        ``outside`` rows are never fetched."""
        self.initialize()
        if self._pool is None:
            with _INIT_LOCK:
                if self._pool is None:
                    # a few more threads than request slots: some decode while others wait on the wire
                    workers = self.config.concurrency + max(2, self.config.concurrency // 4)
                    self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ee-fetch")
        out: list[Patch | None] = [Patch(r, None, "outside") if r.outside else None for r in requests]
        groups: dict[Any, list[int]] = {}
        for i, req in enumerate(requests):
            if not req.outside:
                groups.setdefault(req.group or i, []).append(i)
        if len(groups) == 1:  # one block (a shard of one block): fetch it on this thread, no pool hop
            (idx,) = groups.values()
            for i, patch in zip(idx, self.fetch_block([requests[i] for i in idx])):
                out[i] = patch
            return out  # type: ignore[return-value]
        futures: list[tuple[Future, list[int]]] = [
            (self._pool.submit(self.fetch_block, [requests[i] for i in idx]), idx) for idx in groups.values()]
        try:
            for fut, idx in futures:
                for i, patch in zip(idx, fut.result()):
                    out[i] = patch
        finally:
            for fut, _ in futures:
                fut.cancel()
        return out  # type: ignore[return-value]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def scene_metadata(self) -> dict[str, dict]:
        return {}
