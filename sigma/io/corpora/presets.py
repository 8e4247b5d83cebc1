"""Column names of the public editing corpora, so `--preset magicbrush` is all a user types.

`id` may name several columns joined with "+"; their values are joined with "-" (MagicBrush:
img_id + turn_index). When a preset's id columns are absent the pair id falls back to `<file>:<row>`.
A list-valued instruction column (OmniEdit's `edited_prompt_list`) yields its first non-empty entry,
so the choice is deterministic.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sigma.errors import ConfigError, UnknownNameError
from sigma.text import nearest, shown

# what a `--columns role=column` (or `input.columns:` / POST /v1/batches' `columns`) may map
ROLES = ("original", "edited", "instruction", "mask", "id", "edit_type")


@dataclass(frozen=True)
class Preset:
    name: str
    columns: dict[str, str]
    required: tuple[str, ...] = ("original", "edited", "instruction")
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("magicbrush", {"original": "source_img", "edited": "target_img", "instruction": "instruction",
                          "mask": "mask_img", "id": "img_id+turn_index"},
           description="MagicBrush (osunlp/MagicBrush): multi-turn edits with a drawn mask"),
    Preset("instructpix2pix", {"original": "input_image", "edited": "edited_image", "instruction": "edit_prompt"},
           description="InstructPix2Pix samples (input_image / edited_image / edit_prompt)"),
    Preset("ultraedit", {"original": "source_image", "edited": "edited_image", "instruction": "edit_prompt",
                         "mask": "mask_image"},
           description="UltraEdit: free-form and region-based edits with an optional mask"),
    Preset("anyedit", {"original": "image_file", "edited": "edited_file", "instruction": "edit_instruction",
                       "edit_type": "edit_type"},
           description="AnyEdit: 25 edit types, the type is kept in the manifest"),
    Preset("omniedit", {"original": "src_img", "edited": "edited_img", "instruction": "edited_prompt_list",
                        "id": "omni_edit_id"},
           description="OmniEdit: the first non-empty prompt of edited_prompt_list is used"),
    Preset("generic", {"original": "original", "edited": "edited", "instruction": "instruction", "mask": "mask",
                       "id": "id", "edit_type": "edit_type"},
           required=("original", "edited"),
           description="our own names (also the pairs.jsonl layout); every column but original/edited optional"),
)}


def get_preset(name: str | None) -> Preset:
    if name is None:
        return PRESETS["generic"]
    key = name.lower().replace("-", "").replace("_", "")
    for preset in PRESETS.values():
        if preset.name == key:
            return preset
    raise UnknownNameError(f"Unknown preset {shown(name)!r}. Known: {', '.join(PRESETS)}.", code="unknown_preset")


def resolve_columns(preset: str | None, overrides: dict[str, str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """The preset's mapping with the user's `--columns role=name` applied on top."""
    base = get_preset(preset)
    problem = column_problem(overrides)
    if problem:
        raise ConfigError(f"columns: {problem}")
    columns = {**base.columns, **overrides}
    required = tuple(r for r in base.required if r in columns)
    return columns, required


def column_problem(columns: Mapping[str, str]) -> str | None:
    """What is wrong with a role → column mapping, or None: the one check of `--columns` (`sigma.cli.batch`),
    `input.columns:` in a config file or `--set` and POST /v1/batches' `columns` (`sigma.batch.config.InputConfig`).
    An unknown role was refused only by the readers that look columns up (a tar set took `bogus=x` without a word),
    and a blank column was a mapping to the column named '' (`original=`: "missing column(s) original="), or, in a tar
    set, the default field silently."""
    for role, column in columns.items():
        if not str(role).strip():
            return f"a column with no role ({shown(role)}={shown(column)}); use role=column, roles: {', '.join(ROLES)}"
        if role not in ROLES:
            close = nearest(role, ROLES)
            hint = f" (did you mean {close}?)" if close else ""
            return f"unknown role {shown(role)!r}{hint}; use {', '.join(ROLES)}"
        if not str(column).strip():
            return f"{role}= names no column (role=column, e.g. original=source_img)"
    return None
