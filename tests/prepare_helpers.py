"""Small prepare configs for tests (few masks, so a prepare run takes seconds)."""
from pipeline.masks import RATIO_BINS
from pipeline.masks.library import MaskKindSpec, MaskLibraryConfig
from pipeline.pairings import PairingConfig
from pipeline.prepare import PrepareConfig


def small_mask_config(seed: int = 0) -> MaskLibraryConfig:
    """Every kind, split 60 / 20 / 20 into train / validation / test (5 irregular masks per
    evaluation split: one per hole-ratio bin)."""
    return MaskLibraryConfig(seed=seed, kinds=[
        MaskKindSpec(kind="qd_imd", count=0, bins=None), MaskKindSpec(kind="irregular", count=25),
        MaskKindSpec(kind="slc_off", count=15, bins=list(RATIO_BINS[:3])),
        MaskKindSpec(kind="slc_off_real", count=10), MaskKindSpec(kind="cloud", count=10),
        MaskKindSpec(kind="nodata", count=10, bins=list(RATIO_BINS[:4]))])


def small_prepare_config(seed: int = 0) -> PrepareConfig:
    return PrepareConfig(masks=small_mask_config(seed), pairings=PairingConfig(seed=seed, eval_pairs_per_bin=2))
