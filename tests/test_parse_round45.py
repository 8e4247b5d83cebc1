"""Forms the rules parser read wrong in round 45: non-English instructions (a default add of the whole sentence,
a concept no detector reads), and English forms found by a hostile pass (each section says what it was before)."""
from __future__ import annotations

import json

import pytest

from sigma.cli import main
from sigma.parse.rules import parse_rules


def _edits(text: str) -> list[tuple]:
    return [(e.edit_type, e.source, e.target) for e in parse_rules(text).edits]


@pytest.mark.parametrize("text", [
    "Remplacez le chien par un chat", "ajoute un chat", "Enlève l'arbre", "rends le ciel bleu",
    "Reemplaza el perro por un gato", "quita el coche", "Cambia el color del coche a rojo", "añade un sombrero",
    "Ersetze den Hund durch eine Katze", "entferne das Auto", "Füge eine Katze hinzu",
    "Rimuovi il cane", "Remova o cachorro",
    "把狗换成猫", "猫", "Убери собаку", "犬を消して",
])
def test_a_foreign_instruction_is_no_edit_not_an_invented_concept(text):
    # it was a default add of the whole sentence ('remplacez le chien par un chat'), or 'remove' of 'o cachorro'
    parse = parse_rules(text)
    assert parse.edit_type is None and parse.edits == ()
    assert parse.rule.startswith("unknown-language: ")


@pytest.mark.parametrize("text,edits", [
    ("remove the 猫", [("remove", "猫", None)]),
    ("add a croissant", [("add", None, "croissant")]),
    ("add a chien", [("add", None, "chien")]),
    ("add a sign saying 'bonjour le monde'", [("add", None, "sign")]),
    ("remove the dog. ajoute un chat", [("remove", "dog", None)]),
    ("rémove the dog", [("remove", "dog", None)]),
])
def test_english_with_foreign_words_is_still_read(text, edits):
    assert _edits(text) == edits


def test_a_foreign_instruction_through_the_cli(capsys):
    assert main(["parse", "Ersetze den Hund durch eine Katze"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["edit_type"] is None and out["edits"] == [] and out["rule"].startswith("unknown-language")
