"""Turn an HTTP body (multipart or JSON with base64 images) into bytes + validated options.

Parsing is done by hand rather than by FastAPI parameters so that one route accepts both content
types and every malformed body gets a stable error code instead of a framework default.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Literal

from fastapi import Request
from pydantic import Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from sigma.api.errors import ApiError
from sigma.config.schema import Strict

OUTPUTS = ("rle", "png", "prob")
OPTION_FIELDS = ("instruction", "annotator", "threshold", "outputs", "wait")


class AnnotateOptions(Strict):
    instruction: str | None = Field(None, description="the edit instruction, e.g. 'remove the boat'")
    annotator: str | None = Field(None, description="registry name; default: the first of api.annotators")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="mask = prob > threshold")
    outputs: list[Literal["rle", "png", "prob"]] = Field(
        default_factory=lambda: ["rle"], description="rle (always included), png (base64 mask PNG), "
        "prob (base64 8-bit probability PNG)")
    wait: float | None = Field(None, ge=0.0, description="seconds POST /v1/annotate waits before answering 202")


class AnnotateJson(AnnotateOptions):
    original: str = Field(description="base64 of the original image file (PNG/JPEG/WebP/TIFF/BMP)")
    edited: str = Field(description="base64 of the edited image file")


@dataclass
class Submission:
    original: bytes
    edited: bytes
    options: AnnotateOptions


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "<body>"
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)


def _options(raw: dict) -> AnnotateOptions:
    try:
        return AnnotateOptions.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _validation_message(exc)) from exc


def _b64(text: str, name: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "invalid_base64", f"{name}: not valid base64 ({exc})") from exc


async def parse_submission(request: Request, max_text_chars: int) -> Submission:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _multipart(request, max_text_chars)
    if ctype in ("application/json", ""):
        return await _json(request)
    raise ApiError(415, "unsupported_media_type", f"content type {ctype!r}: send multipart/form-data with "
                   "'original' and 'edited' files, or application/json with base64 images")


async def _json(request: Request) -> Submission:
    body = await request.body()
    if not body:
        raise ApiError(400, "bad_json", "empty body: send multipart/form-data or a JSON object")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON ({type(exc).__name__})") from exc
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", f"body must be a JSON object, got {type(data).__name__}")
    for name in ("original", "edited"):
        if name not in data:
            raise ApiError(400, "missing_field", f"'{name}' (base64 image) is required")
    try:
        parsed = AnnotateJson.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _validation_message(exc)) from exc
    options = AnnotateOptions.model_validate(parsed.model_dump(include=set(OPTION_FIELDS)))
    return Submission(_b64(parsed.original, "original"), _b64(parsed.edited, "edited"), options)


async def _multipart(request: Request, max_text_chars: int) -> Submission:
    try:
        form = await request.form(max_files=2, max_fields=len(OPTION_FIELDS) + 2,
                                  max_part_size=max(4 * max_text_chars + 1024, 16_384))
    except StarletteHTTPException as exc:
        raise ApiError(400, "malformed_multipart", f"multipart body could not be parsed: {exc.detail}") from exc
    except Exception as exc:
        raise ApiError(400, "malformed_multipart", f"multipart body could not be parsed ({type(exc).__name__})"
                       ) from exc
    try:
        unknown = sorted(set(form.keys()) - set(OPTION_FIELDS) - {"original", "edited"})
        if unknown:
            raise ApiError(422, "invalid_request", f"unknown field(s) {unknown}; allowed: original, edited, "
                           f"{', '.join(OPTION_FIELDS)}")
        images: dict[str, bytes] = {}
        for name in ("original", "edited"):
            values = form.getlist(name)
            if not values:
                raise ApiError(400, "missing_field", f"'{name}' file is required")
            if len(values) > 1:
                raise ApiError(422, "invalid_request", f"'{name}' given {len(values)} times")
            if not isinstance(values[0], UploadFile):
                raise ApiError(400, "not_a_file", f"'{name}' must be a file upload, not a text field")
            images[name] = await values[0].read()
        raw: dict = {}
        for name in OPTION_FIELDS:
            values = form.getlist(name)
            if not values:
                continue
            if any(isinstance(v, UploadFile) for v in values):
                raise ApiError(422, "invalid_request", f"'{name}' must be a text field, not a file")
            if name == "outputs":
                raw[name] = [o.strip() for v in values for o in str(v).split(",") if o.strip()]
            elif len(values) > 1:
                raise ApiError(422, "invalid_request", f"'{name}' given {len(values)} times")
            else:
                raw[name] = values[0]
        return Submission(images["original"], images["edited"], _options(raw))
    finally:
        await form.close()
