"""Compatibility: the RLE codec lives in `sigma.rle` (the `Annotation` type below `io` needs it)."""
from sigma.rle import decode_rle, encode_rle, mask_bbox

__all__ = ["decode_rle", "encode_rle", "mask_bbox"]
