"""Everything that touches files or encoded bytes; models never do."""
from sigma.io.geometry import sync_size
from sigma.io.images import DecodedImage, decode_image, encode_png, read_image, read_mask, write_png
from sigma.io.pairs import load_pair, pair_from_bytes
from sigma.rle import decode_rle, encode_rle, mask_bbox

__all__ = ["DecodedImage", "decode_image", "decode_rle", "encode_png", "encode_rle", "load_pair",
           "mask_bbox", "pair_from_bytes", "read_image", "read_mask", "sync_size", "write_png"]
