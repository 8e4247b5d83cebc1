"""The parser's output: what changed (edit type) and which concepts a detector should look for."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

EditType = Literal["add", "remove", "replace", "attribute", "global"]
EDIT_TYPES: tuple[str, ...] = ("add", "remove", "replace", "attribute", "global")


class ParsedInstruction(BaseModel):
    """One instruction parsed into (edit_type, source, target).

    `source` is the concept to find in the original (remove, replace, attribute), `target` the one to
    find in the edited image (add, replace, attribute; the same object as `source` for attribute edits).
    Concepts are short noun phrases an open-vocabulary detector can take: no articles, counts or
    location clauses. `edit_type` is None when there was no instruction at all.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    instruction: str | None = None
    edit_type: EditType | None = None
    source: str | None = None
    target: str | None = None
    backend: str = "rules"
    fallback: bool = Field(False, description="the requested backend failed (invalid output, missing "
                                              "model) and the rules parser answered instead")
    rule: str | None = Field(None, description="which rule or path produced the parse, for debugging")

    @property
    def is_empty(self) -> bool:
        return self.edit_type is None

    def concepts(self) -> dict[str, str | None]:
        """Which concept to look for in which image (METHOD §3), None where the type needs none."""
        et = self.edit_type
        return {
            "original": self.source if et in ("remove", "replace", "attribute") else None,
            "edited": self.target if et in ("add", "replace", "attribute") else None,
        }

    def to_json_dict(self) -> dict:
        return self.model_dump(mode="json")
