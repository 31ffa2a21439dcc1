"""A fake Earth Engine REST server (tests and bench only), answering from bundled real scenes."""
from .server import FakeEarthEngine, FAKE_IMAGES

__all__ = ["FakeEarthEngine", "FAKE_IMAGES"]
