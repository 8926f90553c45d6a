"""mm1bundle: read mm1pack model bundles (formats/bundle.md v1) with NumPy."""
from .bundle import (Bundle, BundleError, DigestError, Quant, Section, Tensor, bf16_to_f32, open_bundle)

__all__ = ["Bundle", "BundleError", "DigestError", "Quant", "Section", "Tensor", "bf16_to_f32", "open_bundle"]
__version__ = "1.0.0"
