"""The parser's output: what changed (edit type) and which concepts a detector should look for.

An instruction may ask for several edits ("make the sky purple and add a moon"): `edits` lists them
all, in the order the text gives them. The top-level `edit_type`/`source`/`target` are the first
edit's, so readers written for one edit per instruction (result.json, batch rows) keep working.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

EditType = Literal["add", "remove", "replace", "attribute", "global"]
EDIT_TYPES: tuple[str, ...] = ("add", "remove", "replace", "attribute", "global")
# The most edits one instruction yields. Grounding asks the detector once per concept of every edit, so a text that
# lists a hundred objects ("remove a1. remove a2. ...", 1000 characters) cost a hundred detections per pair (and a
# 200 KB one 30 s of parsing); the edits after the 8th are not read (`rule` says so). Real instructions name 1-4.
MAX_EDITS = 8


def concepts_of(edit_type: str | None, source: str | None, target: str | None) -> dict[str, str | None]:
    """Which concept to look for in which image (METHOD §3), None where the type needs none."""
    return {
        "original": source if edit_type in ("remove", "replace", "attribute") else None,
        "edited": target if edit_type in ("add", "replace", "attribute") else None,
    }


class Edit(BaseModel):
    """One edit of an instruction: (edit_type, source, target), with the same conventions as the
    top-level fields of `ParsedInstruction`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    edit_type: EditType
    source: str | None = None
    target: str | None = None
    rule: str | None = Field(None, description="which rule or path produced this edit, for debugging")

    def concepts(self) -> dict[str, str | None]:
        return concepts_of(self.edit_type, self.source, self.target)


class ParsedInstruction(BaseModel):
    """One instruction parsed into its edits; the first edit also as (edit_type, source, target).

    `source` is the concept to find in the original (remove, replace, attribute), `target` the one to
    find in the edited image (add, replace, attribute; the same object as `source` for attribute edits).
    Concepts are short noun phrases an open-vocabulary detector can take: no articles, counts or
    location clauses. `edit_type` is None (and `edits` empty) when there was no instruction at all.

    Built either from the top-level fields (one edit; `edits` is filled from them) or from `edits`
    (the top-level fields are filled from the first); giving both that disagree is an error.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    instruction: str | None = None
    edit_type: EditType | None = None
    source: str | None = None
    target: str | None = None
    backend: str = "rules"
    fallback: bool = Field(False, description="the requested backend failed (invalid output, missing "
                                              "model) and the rules parser answered instead")
    rule: str | None = Field(None, description="which rule or path produced the (first) parse, for debugging")
    edits: tuple[Edit, ...] = Field((), description="every edit the instruction asks for, in text order; "
                                                    "edits[0] is the top-level edit_type/source/target")

    @model_validator(mode="before")
    @classmethod
    def _one_edit_or_many(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        edits = [e if isinstance(e, Edit) else Edit.model_validate(e) for e in (data.get("edits") or ())]
        top = (data.get("edit_type"), data.get("source"), data.get("target"))
        if not edits:
            if top[0] is not None:
                data["edits"] = (Edit(edit_type=top[0], source=top[1], target=top[2], rule=data.get("rule")),)
            return data
        first = (edits[0].edit_type, edits[0].source, edits[0].target)
        if top == (None, None, None):
            data.update(edit_type=first[0], source=first[1], target=first[2])
            data.setdefault("rule", edits[0].rule)
        elif top != first:
            raise ValueError(f"the top-level edit {top} is not the first of `edits` {first}")
        data["edits"] = tuple(edits)
        return data

    @property
    def is_empty(self) -> bool:
        return self.edit_type is None

    @property
    def edit_types(self) -> list[str]:
        """The type of every edit, in order (empty when there was no instruction)."""
        return [e.edit_type for e in self.edits]

    def concepts(self) -> dict[str, str | None]:
        """The first edit's concepts per image (kept for callers written for one edit)."""
        return concepts_of(self.edit_type, self.source, self.target)

    def all_concepts(self) -> list[tuple[int, str, str]]:
        """(edit index, image side, concept) for every edit and side its type needs, in order."""
        return [(k, side, concept) for k, edit in enumerate(self.edits)
                for side, concept in edit.concepts().items() if concept]

    def to_json_dict(self) -> dict:
        return self.model_dump(mode="json")
