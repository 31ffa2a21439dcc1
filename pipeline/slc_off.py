"""Alias kept for docs/CONTRACTS.md (``pipeline/slc_off.py``): the SLC-off generator and the
stripe measurement live in :mod:`pipeline.masks.slc_off`."""
from pipeline.masks.slc_off import SlcOffParams, StripeStats, measure_stripes, slc_off_mask

__all__ = ["SlcOffParams", "StripeStats", "measure_stripes", "slc_off_mask"]
