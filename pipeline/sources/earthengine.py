"""Earth Engine source on the genuine earthengine-api: ``ee.data.computePixels`` per patch.

* Expression: ``ee.Image(asset).select([B3, B2, B1, QA_PIXEL])`` (TOA, default) or
  ``[SR_B3, SR_B2, SR_B1, QA_PIXEL]`` (Collection 2 L2), fileFormat ``NUMPY_NDARRAY`` (a
  structured array, one field per band), grid = ``{dimensions, affineTransform, crsCode}`` in the
  UTM zone of the patch (EPSG:326xx/327xx), 30 m pixels.
* Stored radiometry: TOA reflectance float -> uint16 x 10000 (scale 1e-4); SR raw uint16
  (scale 2.75e-05, offset -0.2). QA_PIXEL decides skips: fill -> "nodata", cloud/shadow/dilated
  cloud -> "clouds" (thresholds from the config).
* Scenes: ``ee.data.listImages`` over each AOI and the date window, CLOUD_COVER filtered.
* Auth (headless): service-account JSON key from ``config.key`` / ``$EDGEFILL_EE_KEY`` /
  ``$GOOGLE_APPLICATION_CREDENTIALS`` -> ``ee.ServiceAccountCredentials``; the key is never
  logged nor written anywhere. ``high_volume`` uses the high-volume endpoint.
* Concurrency: one thread pool per source; a semaphore keeps at most ``concurrency`` (<= 40)
  requests on the wire while other threads decode/convert finished responses, and request
  starts are paced to ``max_requests_per_s`` (< GEE's 100/s per project);
  429 / 5xx / timeouts / broken bodies are retried with exponential backoff + jitter up to
  ``max_attempts``, then :class:`EarthEngineError`.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import shapely.geometry

from pipeline.aoi import AOI, assign_splits, grid_cells, read_aois, to_utm, utm_epsg
from pipeline.export_config import HIGH_VOLUME_URL, ExportConfig, ExportError
from pipeline.qa import qa_cloud_mask
from pipeline.sampling import interleave
from pipeline.sources.base import Patch, PatchRequest, SourceError
from pipeline.store import Radiometry

KEY_ENV_VARS = ("EDGEFILL_EE_KEY", "GOOGLE_APPLICATION_CREDENTIALS")
PIXEL_M = 30.0
RETRY_STATUSES = {429, 500, 502, 503, 504}
_INIT_LOCK = threading.Lock()


class EarthEngineError(SourceError):
    """Earth Engine refused or kept failing (message says what and how often)."""


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


def is_retryable(exc: BaseException) -> bool:
    """429 / 5xx, timeouts, dropped connections and truncated/garbled bodies are transient."""
    import ee

    if isinstance(exc, ee.EEException):
        status = _status_of(exc)
        return status in RETRY_STATUSES or "Too Many Requests" in str(exc)
    return isinstance(exc, (TimeoutError, ConnectionError, OSError, ValueError, EOFError)) or \
        type(exc).__module__.split(".")[0] in ("requests", "urllib3", "httplib2", "http")


def describe(exc: BaseException) -> str:
    status = _status_of(exc)
    return f"{type(exc).__name__}{f' (HTTP {status})' if status else ''}: {str(exc)[:300]}"


def with_retries(call: Callable[[], Any], what: str, *, max_attempts: int, backoff_s: float,
                 sleep: Callable[[float], None] = time.sleep) -> Any:
    """Run ``call``; retry transient errors with delay ``backoff_s * 2**i * U(0.5, 1.5)``."""
    last: BaseException | None = None
    for attempt in range(max_attempts):
        try:
            return call()
        except Exception as exc:  # classified below
            if not is_retryable(exc):
                raise EarthEngineError(f"{what} failed (not retryable): {describe(exc)}") from exc
            last = exc
            if attempt + 1 < max_attempts:
                sleep(backoff_s * (2 ** attempt) * random.uniform(0.5, 1.5))
    raise EarthEngineError(f"{what} failed after {max_attempts} attempts; last error: {describe(last)}") from last


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
                                         description="TOA reflectance x 10000 (Earth Engine float TOA, rounded)")
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
    def url(self) -> str | None:
        return self.config.api_url or (HIGH_VOLUME_URL if self.config.high_volume else None)

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
                where = self.url or "the default Earth Engine endpoint"
                raise EarthEngineError(f"cannot initialize Earth Engine at {where}: {type(exc).__name__}: "
                                       f"{str(exc)[:300]}") from exc
            session = ee.data._get_state().requests_session  # noqa: SLF001 - connection pool sized to concurrency
            if session is not None:
                import requests.adapters

                adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=self.config.concurrency + 8)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
        self._initialized = True

    # -- planning -----------------------------------------------------------------------
    def list_scenes(self, aoi: AOI) -> list[dict]:
        """Images of the collection over ``aoi`` in the date window with CLOUD_COVER below the limit."""
        import ee

        self.initialize()
        c = self.config
        params = {"parent": c.collection, "startTime": f"{c.start}T00:00:00Z", "endTime": f"{c.end}T00:00:00Z",
                  "region": json.dumps(shapely.geometry.mapping(aoi.geometry)),
                  "properties": [f"CLOUD_COVER < {c.max_scene_cloud_cover}"]}
        result = with_retries(lambda: ee.data.listImages(dict(params)), f"listImages over AOI {aoi.name}",
                              max_attempts=c.max_attempts, backoff_s=c.backoff_s)
        return sorted(result.get("images", []), key=lambda im: im.get("id", im.get("name", "")))

    def strata(self) -> list[list[PatchRequest]]:
        """Candidates per AOI: every scene's 256 x 256 cells inside AOI and footprint, seeded shuffle."""
        c = self.config
        aois = read_aois(c.aoi_files())
        splits = assign_splits(aois, c.seed, c.test_fraction, c.validation_fraction)
        out: list[list[PatchRequest]] = []
        n_scenes = 0
        self.initialize()
        with ThreadPoolExecutor(min(8, len(aois))) as pool:  # list every AOI's scenes concurrently
            listings = list(pool.map(self.list_scenes, aois))
        for aoi, images in zip(aois, listings):
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
                reqs = [PatchRequest(asset=asset, scene_id=scene_id, epsg=epsg,
                                     transform=(PIXEL_M, 0.0, x, 0.0, -PIXEL_M, y), size=c.patch_size,
                                     acquired=str(image.get("startTime", ""))[:10], sensor=scene_id[:4],
                                     split=splits[aoi.name], stratum=aoi.name)
                        for x, y in grid_cells(to_utm(region, epsg), PIXEL_M, c.patch_size, origin)]
                random.Random(f"{c.seed}:{aoi.name}:{asset}").shuffle(reqs)
                per_scene.append(reqs)
            out.append(interleave(per_scene, c.seed))
        if n_scenes == 0:
            raise ExportError(f"no scenes in {c.collection} between {c.start} and {c.end} with CLOUD_COVER < "
                              f"{c.max_scene_cloud_cover} over AOIs {[a.name for a in aois]}")
        return out

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
    def _params(self, req: PatchRequest) -> dict:
        import ee

        a, b, c0, d, e, f = req.transform
        return {"expression": ee.Image(req.asset).select(self.config.band_ids + ["QA_PIXEL"]),
                "fileFormat": "NUMPY_NDARRAY",
                "grid": {"dimensions": {"width": req.size, "height": req.size},
                         "affineTransform": {"scaleX": a, "shearX": b, "translateX": c0,
                                             "shearY": d, "scaleY": e, "translateY": f},
                         "crsCode": f"EPSG:{req.epsg}"}}

    def _pace(self) -> None:
        """Space request starts at least ``1 / max_requests_per_s`` apart (GEE: 100 requests/s)."""
        with self._pace_lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + 1.0 / self.config.max_requests_per_s
        if start > now:
            time.sleep(start - now)

    def _compute(self, req: PatchRequest) -> np.ndarray:
        import ee

        params = self._params(req)
        self._pace()
        with self._in_flight:  # at most ``concurrency`` requests on the wire; decoding happens outside
            arr = ee.data.computePixels(params)
        names = self.config.band_ids + ["QA_PIXEL"]
        if not isinstance(arr, np.ndarray) or arr.dtype.names is None or any(n not in arr.dtype.names for n in names):
            raise ValueError(f"computePixels returned {type(arr).__name__} without fields {names}")
        if arr.shape != (req.size, req.size):
            raise ValueError(f"computePixels returned shape {arr.shape}, expected {(req.size, req.size)}")
        return arr

    def fetch(self, req: PatchRequest) -> Patch:
        self.initialize()
        c = self.config
        arr = with_retries(lambda: self._compute(req), f"computePixels for {req.asset} at {req.transform[2]:.0f},"
                           f"{req.transform[5]:.0f} (EPSG:{req.epsg})", max_attempts=c.max_attempts, backoff_s=c.backoff_s)
        qa = arr["QA_PIXEL"].astype(np.uint16)
        bands = np.stack([arr[n] for n in c.band_ids]).astype(np.float64)
        missing = (qa & 1).astype(bool) | np.all(bands == 0, axis=0)
        missing_fraction = float(missing.mean())
        if missing_fraction > c.max_nodata:
            return Patch(req, None, "nodata", missing_fraction)
        clouds = qa_cloud_mask(qa, "c2_qa_pixel", shadow=True, fill=False)
        if float(clouds.mean()) > c.max_cloud_fraction:
            return Patch(req, None, "clouds", missing_fraction)
        if c.product == "toa":
            pixels = np.clip(np.rint(bands * 10000.0), 0, 65535).astype(np.uint16)
        else:
            pixels = np.clip(np.rint(bands), 0, 65535).astype(np.uint16)
        return Patch(req, pixels, None, missing_fraction)

    def fetch_many(self, requests: list[PatchRequest]) -> list[Patch]:
        """Concurrent fetch on the source's pool (at most ``concurrency`` requests in flight)."""
        self.initialize()
        if self._pool is None:
            with _INIT_LOCK:
                if self._pool is None:
                    # a few more threads than request slots: one thread decodes while another waits
                    workers = self.config.concurrency + max(2, self.config.concurrency // 4)
                    self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ee-fetch")
        return list(self._pool.map(self.fetch, requests))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def scene_metadata(self) -> dict[str, dict]:
        return {}
