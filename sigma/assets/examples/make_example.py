"""Rebuild the example pair that `sigma annotate --example` runs on.

Source photos (both in scikit-image's bundled data, no download needed):
  * `skimage.data.astronaut()`: Eileen Collins, NASA; "no known copyright restrictions, released into
    the public domain".
  * `skimage.data.coffee()`: a coffee cup by Rachel Michetti, CC0.

The edit is "replace the space shuttle model with a cup of coffee", done the way real editing tools do it:
  1. the shuttle model (a hand-drawn polygon, dilated 3 px) is removed by real inpainting
     (OpenCV's Telea method, radius 9);
  2. the cup and saucer are cut out of `coffee()` with a feathered ellipse, scaled and spliced onto the
     table where the model stood.
The ground-truth mask is exactly the set of pixels the edit wrote: the inpainted region and the pasted
region (alpha >= 0.5; the 1-px feathered rim outside it changes by less than half a blend).
Both images are saved as JPEG (quality 92; the edited one is the decoded original JPEG, edited and saved
again, as a phone app would), so pixels outside the mask differ only by re-compression.

Run: python sigma/assets/examples/make_example.py   (needs scikit-image: pip install -e ".[train]")
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
PAIR_ID = "sigma_example"
INSTRUCTION = "replace the space shuttle model with a cup of coffee"
JPEG_QUALITY = 92

# The shuttle model with its stand, traced by hand on the 512x512 astronaut photo (x, y).
SHUTTLE_POLYGON = [
    (398, 0), (440, 0), (441, 33), (446, 36), (454, 52), (457, 200), (464, 222), (460, 242), (454, 262),
    (476, 271), (479, 289), (364, 289), (365, 271), (373, 262), (352, 229), (358, 206), (377, 186),
    (379, 60), (386, 41), (392, 38), (393, 20),
]
CUP_CENTER_XY = (438, 300)     # where the saucer's centre lands in the astronaut photo
CUP_WIDTH = 104                # saucer width after scaling, pixels


def _jpeg_roundtrip(rgb: np.ndarray) -> tuple[np.ndarray, bytes]:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=True)
    data = buf.getvalue()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy(), data


def remove_shuttle(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inpaint the shuttle model away; returns (image, bool mask of the inpainted pixels)."""
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.array(SHUTTLE_POLYGON, np.int32)], 255)
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    filled = cv2.inpaint(bgr, mask, 9, cv2.INPAINT_TELEA)
    return cv2.cvtColor(filled, cv2.COLOR_BGR2RGB), mask > 0


def cup_cutout() -> tuple[np.ndarray, np.ndarray]:
    """The cup and saucer from `coffee()`, scaled, with a feathered elliptical alpha in [0, 1]."""
    from skimage import data

    coffee = data.coffee()                                   # 400 x 600
    alpha = np.zeros(coffee.shape[:2], np.float32)
    cv2.ellipse(alpha, (278, 222), (203, 168), 0, 0, 360, 1.0, -1, lineType=cv2.LINE_AA)
    x0, y0, x1, y1 = 278 - 206, 222 - 171, 278 + 207, 222 + 172
    rgb, alpha = coffee[y0:y1, x0:x1], alpha[y0:y1, x0:x1]
    scale = CUP_WIDTH / rgb.shape[1]
    size = (CUP_WIDTH, round(rgb.shape[0] * scale))
    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    alpha = cv2.GaussianBlur(cv2.resize(alpha, size, interpolation=cv2.INTER_AREA), (3, 3), 0)
    return rgb, np.clip(alpha, 0.0, 1.0)


def splice(image: np.ndarray, rgb: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = alpha.shape
    x0, y0 = CUP_CENTER_XY[0] - w // 2, CUP_CENTER_XY[1] - h // 2
    out = image.astype(np.float32).copy()
    region = out[y0:y0 + h, x0:x0 + w]
    region[:] = region * (1 - alpha[..., None]) + rgb.astype(np.float32) * alpha[..., None]
    mask = np.zeros(image.shape[:2], bool)
    mask[y0:y0 + h, x0:x0 + w] = alpha >= 0.5
    return np.clip(np.round(out), 0, 255).astype(np.uint8), mask


def build() -> dict[str, bytes]:
    from skimage import data

    original, original_jpeg = _jpeg_roundtrip(data.astronaut())
    edited, removed = remove_shuttle(original)
    edited, pasted = splice(edited, *cup_cutout())
    _, edited_jpeg = _jpeg_roundtrip(edited)
    mask = (removed | pasted).astype(np.uint8) * 255
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG", optimize=True)
    record = {"id": PAIR_ID, "original": f"{PAIR_ID}_original.jpg", "edited": f"{PAIR_ID}_edited.jpg",
              "mask": f"{PAIR_ID}_mask.png", "instruction": INSTRUCTION, "instruction_source": "author",
              "prompt": None, "edit_type": "replace", "editor": "OpenCV Telea inpainting + alpha splice",
              "whole_image_changed": False,
              "source": "skimage.data.astronaut (NASA, public domain) + skimage.data.coffee (CC0)",
              "mask_provenance": "exact: the pixels written by the edit (make_example.py)"}
    return {record["original"]: original_jpeg, record["edited"]: edited_jpeg, record["mask"]: buf.getvalue(),
            "pairs.jsonl": (json.dumps(record) + "\n").encode()}


def main() -> None:
    for name, blob in build().items():
        (HERE / name).write_bytes(blob)
        print(f"{HERE / name}: {len(blob)} bytes")


if __name__ == "__main__":
    main()
