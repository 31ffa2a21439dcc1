"""Fake Earth Engine REST API on 127.0.0.1 for the genuine earthengine-api client.

Answers what ``ee.Initialize`` / ``ee.data.listImages`` / ``ee.data.computePixels`` call:

* ``GET /$discovery/rest`` - a discovery document (v1) naming the methods used, ``rootUrl``
  pointing back here, ``prettyPrint`` among the global parameters;
* ``GET /v1/projects/P/algorithms`` - signatures of Image.load / Image.select;
* ``GET /v1/projects/earthengine-public/assets/COLLECTION:listAssets?filter=...`` - images of
  :data:`FAKE_IMAGES` matching the startTime/endTime/intersects/CLOUD_COVER filter;
* ``POST /v1/projects/P/image:computePixels`` - the requested grid window cut from the real
  bundled scene behind the asset, as NPY (structured array, one field per band; TOA float32 =
  DN / 255 * 0.5, QA_PIXEL bit 0 = fill outside the scene, bit 3 = cloud on saturated pixels);
* ``POST /token`` - OAuth token endpoint for service-account keys whose ``token_uri`` points here.

Faults are injectable: ``latency_s`` per computePixels (total server time, rendering included), ``max_concurrent`` (extra requests wait),
``faults`` (a FIFO consumed one per computePixels call: "429", "503", "timeout", "truncated")
and ``always`` (a fault applied to every computePixels call).
"""
from __future__ import annotations

import io
import json
import re
import threading
import time
from collections import deque
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import shapely.geometry
from pyproj import Transformer

from pipeline.scenes import read_scene

COLLECTION = "LANDSAT/LE07/C02/T1_TOA"
# Fake Earth Engine image id -> (bundled 30 m scene, acquisition date, CLOUD_COVER %).
FAKE_IMAGES = {
    f"{COLLECTION}/LE07_040028_20010706": ("LT05_040028_20060706", "2001-07-06", 4.0),
    f"{COLLECTION}/LE07_224078_20020518": ("LC08_224078_20200518_ITAIPU", "2002-05-18", 12.0),
    f"{COLLECTION}/LE07_038034_20000818": ("LC08_038034_20150818_ZION", "2000-08-18", 8.0),
    f"{COLLECTION}/LE07_038034_20010821": ("LC08_038034_20150818_ZION", "2001-08-21", 55.0),
}
ALGORITHMS = [
    {"name": "algorithms/Image.load", "description": "Returns the image given its ID.", "returnType": "Image<unknown bands>",
     "arguments": [{"argumentName": "id", "type": "String"},
                   {"argumentName": "version", "type": "Long", "optional": True, "defaultValue": -1.0}]},
    {"name": "algorithms/Image.select", "description": "Selects bands.", "returnType": "Image<unknown bands>",
     "arguments": [{"argumentName": "input", "type": "Image<unknown bands>"},
                   {"argumentName": "bandSelectors", "type": "List<Object>"},
                   {"argumentName": "newNames", "type": "List<String>", "optional": True, "defaultValue": None}]},
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


@lru_cache(maxsize=8)
def _scene(scene_id: str):
    return read_scene(scene_id)


@lru_cache(maxsize=16)
def footprint_lonlat(scene_id: str) -> shapely.geometry.Polygon:
    s = _scene(scene_id)
    h, w = s.valid.shape
    tr = Transformer.from_crs(s.epsg, 4326, always_xy=True)
    corners = [s.transform @ xy for xy in ((0, 0), (w, 0), (w, h), (0, h))]
    return shapely.geometry.Polygon([tr.transform(x, y) for x, y in corners])


def _grid(scene_id: str) -> dict:
    s = _scene(scene_id)
    t = s.transform
    return {"crsCode": f"EPSG:{s.epsg}", "dimensions": {"width": s.valid.shape[1], "height": s.valid.shape[0]},
            "affineTransform": {"scaleX": t.a, "shearX": t.b, "translateX": t.c, "shearY": t.d, "scaleY": t.e,
                                "translateY": t.f}}


def render_window(asset: str, bands: list[str], grid: dict) -> np.ndarray:
    """Cut the requested grid from the bundled scene behind ``asset`` (nearest neighbour)."""
    scene_id = FAKE_IMAGES[asset][0]
    s = _scene(scene_id)
    epsg = int(grid["crsCode"].split(":")[1])
    if epsg != s.epsg:
        raise ValueError(f"fake server only serves {asset} in EPSG:{s.epsg}, got {grid['crsCode']}")
    w, h = grid["dimensions"]["width"], grid["dimensions"]["height"]
    at = grid["affineTransform"]
    xs = at["translateX"] + (np.arange(w) + 0.5) * at["scaleX"]
    ys = at["translateY"] + (np.arange(h) + 0.5) * at["scaleY"]
    cols = np.floor((xs - s.transform.c) / s.transform.a).astype(int)
    rows = np.floor((ys - s.transform.f) / s.transform.e).astype(int)
    H, W = s.valid.shape
    inside = ((rows >= 0) & (rows < H))[:, None] & ((cols >= 0) & (cols < W))[None, :]
    rr, cc = np.clip(rows, 0, H - 1)[:, None], np.clip(cols, 0, W - 1)[None, :]
    valid = inside & s.valid[rr, cc]
    rgb = np.where(valid, s.rgb[:, rr, cc], 0)
    qa = np.where(valid, 0, 1).astype(np.uint16)
    qa |= np.where(valid & (rgb.mean(axis=0) > 235), 1 << 3, 0).astype(np.uint16)
    names = {"B3": 0, "B2": 1, "B1": 2}
    fields = [(b, "<f4") for b in bands if b != "QA_PIXEL"] + ([("QA_PIXEL", "<u2")] if "QA_PIXEL" in bands else [])
    out = np.zeros((h, w), dtype=fields)
    for b in bands:
        if b == "QA_PIXEL":
            out[b] = qa
        elif b in names:
            out[b] = (rgb[names[b]] / 255.0 * 0.5).astype(np.float32)
        else:
            raise ValueError(f"band {b!r} not in fake image {asset}")
    return out


def _parse_expression(expr: dict) -> tuple[str, list[str]]:
    """(asset id, band selectors) from a serialized Image.select(Image.load(id), bands) graph."""
    values = expr["values"]

    def resolve(node):
        if "valueReference" in node:
            return resolve(values[node["valueReference"]])
        return node

    asset, bands = None, None

    def walk(node):
        nonlocal asset, bands
        node = resolve(node)
        inv = node.get("functionInvocationValue")
        if not inv:
            return
        args = inv.get("arguments", {})
        if inv["functionName"] == "Image.load":
            asset = resolve(args["id"])["constantValue"]
        elif inv["functionName"] == "Image.select":
            sel = resolve(args["bandSelectors"])
            bands = sel.get("constantValue") or [resolve(v)["constantValue"] for v in sel["arrayValue"]["values"]]
            walk(args["input"])
        else:
            raise ValueError(f"fake server does not implement {inv['functionName']}")

    walk(values[expr["result"]])
    if asset is None:
        raise ValueError("expression loads no image")
    return asset, bands or ["B3", "B2", "B1"]


def parse_filter(flt: str) -> dict:
    """The listAssets filter the client builds: startTime/endTime bounds, CLOUD_COVER, intersects."""
    regions = [shapely.geometry.shape(json.loads(r.replace("'", '"'))) for r in re.findall(r'intersects\("([^"]+)"\)', flt)]
    return {"start": [v[:10] for v in re.findall(r'startTime\s*>=\s*"([^"]+)"', flt)],
            "end": [v[:10] for v in re.findall(r'endTime\s*<\s*"([^"]+)"', flt)],
            "cloud": [float(v) for v in re.findall(r'properties\.CLOUD_COVER\s*<\s*([0-9.]+)', flt)],
            "regions": regions}


def _match(image_id: str, flt: dict) -> bool:
    scene_id, date, cloud = FAKE_IMAGES[image_id]
    return (all(date >= v for v in flt["start"]) and all(date < v for v in flt["end"])
            and all(cloud < v for v in flt["cloud"])
            and all(r.intersects(footprint_lonlat(scene_id)) for r in flt["regions"]))


class FakeEarthEngine:
    """Context manager running the fake server in a thread; ``url`` is its base URL."""

    def __init__(self, latency_s: float = 0.0, max_concurrent: int = 40, faults: list[str] | None = None,
                 always: str | None = None, timeout_sleep_s: float = 3.0):
        self.latency_s, self.always, self.timeout_sleep_s = latency_s, always, timeout_sleep_s
        self.faults = deque(faults or [])
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.lock = threading.Lock()
        self.counts = {"computePixels": 0, "listAssets": 0, "algorithms": 0, "discovery": 0, "token": 0}
        self.in_flight = 0
        self.max_in_flight = 0
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
    def _send(h, status: int, body: bytes, ctype: str = "application/json", truncate: bool = False) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        if truncate:
            h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(body[: len(body) // 2] if truncate else body)
        if truncate:
            h.wfile.flush()
            h.close_connection = True

    def _json(self, h, obj, status: int = 200) -> None:
        self._send(h, status, json.dumps(obj).encode())

    def _error(self, h, status: int, message: str) -> None:
        self._json(h, {"error": {"code": status, "message": message, "status": "ERROR"}}, status)

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
                       "startTime": f"{FAKE_IMAGES[iid][1]}T17:30:00Z",
                       "geometry": shapely.geometry.mapping(footprint_lonlat(FAKE_IMAGES[iid][0])),
                       "properties": {"CLOUD_COVER": FAKE_IMAGES[iid][2]},
                       "bands": [{"id": b, "dataType": {"precision": "FLOAT"}, "grid": _grid(FAKE_IMAGES[iid][0])}
                                 for b in ("B1", "B2", "B3")]}
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
            fault = self.faults.popleft() if self.faults else self.always
        with self.slots:
            with self.lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            t0 = time.perf_counter()
            try:
                if fault in ("429", "503"):
                    time.sleep(self.latency_s)
                    return self._error(h, int(fault), "Too many concurrent aggregations." if fault == "429"
                                       else "Service unavailable.")
                if fault == "timeout":
                    time.sleep(self.timeout_sleep_s)
                try:
                    req = json.loads(body)
                    asset, bands = _parse_expression(req["expression"])
                    if asset not in FAKE_IMAGES:
                        return self._error(h, 404, f"Image asset '{asset}' not found.")
                    arr = render_window(asset, bands, req["grid"])
                except (KeyError, ValueError) as exc:
                    return self._error(h, 400, str(exc))
                buf = io.BytesIO()
                np.save(buf, arr)
                # latency_s = the whole server-side time of a request (rendering included)
                time.sleep(max(0.0, self.latency_s - (time.perf_counter() - t0)))
                self._send(h, 200, buf.getvalue(), "application/octet-stream", truncate=fault == "truncated")
            finally:
                with self.lock:
                    self.in_flight -= 1


def main() -> None:
    """Run the fake server in its own process (the benchmark does, so that the server's numpy
    work does not share a GIL with the client): prints its URL, serves until killed."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--max-concurrent", type=int, default=40)
    ap.add_argument("--extra-dates", type=int, default=0, help="add N more fake images (dates) of the same scenes")
    args = ap.parse_args()
    scenes = sorted({v[0] for v in FAKE_IMAGES.values()})
    for k in range(args.extra_dates):
        FAKE_IMAGES[f"{COLLECTION}/BENCH_{k:03d}"] = (scenes[k % len(scenes)], f"2002-{1 + k % 12:02d}-{1 + k % 28:02d}", 1.0)
    for scene in scenes:  # warm the scene cache before announcing the URL
        footprint_lonlat(scene)
    with FakeEarthEngine(latency_s=args.latency, max_concurrent=args.max_concurrent) as fake:
        print(fake.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
