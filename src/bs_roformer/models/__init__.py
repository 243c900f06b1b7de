from .bs_roformer import BSRoformer
from .mel_band_roformer import MelBandRoformer

__all__ = ["BSRoformer", "MelBandRoformer"]
