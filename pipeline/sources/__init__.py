"""Patch sources: :class:`LocalSceneSource` (bundled real GeoTIFFs, the embedded default) and
:class:`EarthEngineSource` (``ee.data.computePixels``) behind one interface (``base``)."""
from pipeline.sources.base import Patch, PatchRequest, PatchSource, SourceError

__all__ = ["Patch", "PatchRequest", "PatchSource", "SourceError"]
