"""JSON answers that always encode, and the check that keeps invalid text out in the first place.

Python's `json.loads` turns `"\\ud800"` into a str holding a lone UTF-16 surrogate, which no UTF-8 encoder
accepts: rendering it made Starlette's JSONResponse raise, so a job stored with such an instruction answered
500 on every GET. Requests are refused at the door (`find_surrogate`, 422 `invalid_text`); and whatever a
record holds (written before that check, or by another writer), `SafeJSONResponse` renders it with U+FFFD in
place of each lone surrogate rather than failing.
"""
from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from sigma.text import dumps_finite, replace_surrogates


class SafeJSONResponse(JSONResponse):
    """Starlette's JSONResponse, except that a lone surrogate becomes U+FFFD and a non-finite float null,
    instead of a 500: a stored record must always render."""

    def render(self, content: Any) -> bytes:
        text = dumps_finite(content, ensure_ascii=False, indent=None, separators=(",", ":"))
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return replace_surrogates(text).encode("utf-8")
