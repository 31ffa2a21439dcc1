"""Reference-guided filling: a second acquisition of the same place (another date, possibly another
sensor) as the source of what lies under the target's holes.

Rooms:
- :mod:`models.reference.fills`: the classical reference fills (reference + harmonic difference,
  local linear regression, similar pixels in the NSPI manner), plain functions over arrays.
- :mod:`models.reference.adaptive`: scene-adaptive fitting: the target's own known pixels, under
  its own hole geometry shifted onto known ground, are paired examples of the reference-to-target
  relation; a combination of the classical fills is fitted on them, checked on held-out known
  pixels, and used only where it beats the best single fill there.

Conventions: images float32 (C, H, W) in [0, 1]; masks (H, W) bool, ``hole`` True = missing in the
target, ``ref_valid`` True = the reference holds a valid pixel there.
"""
