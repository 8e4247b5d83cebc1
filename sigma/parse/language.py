"""Is a sentence English at all? The rules parser reads English only.

A French, Spanish, German or Chinese instruction used to be a default add of the whole sentence ("Remplacez le
chien par un chat" asked the detector for `remplacez le chien par un chat`, "把狗换成猫" for `把狗换成猫`): a concept
no detector reads, and an edit type that is a guess. Such a sentence is now not read (`sigma.parse.rules`): when no
sentence of the text is English the parse has no edit (`edit_type` null, rule `unknown-language: ...`), which the
grounding treats as no instruction (an uninformative prior), not as an edit of invented concepts.

The test is deliberately narrow, so that English with a foreign name or quoted text in it ("add a sign saying
'bonjour le monde'", "add a croissant", "remove the 猫") is still read: a sentence is foreign when it has letters but
no word in the Latin script, or when its words of other languages' closed classes and common editing verbs
(`FOREIGN_WORDS`: no word that is also English) outnumber its English function words and editing verbs
(`ENGLISH_WORDS`).
"""
from __future__ import annotations

import re
import unicodedata

from sigma.parse import lexicon as L
from sigma.parse.typos import RULE_WORDS

# Function words and editing verbs of French, Spanish, Italian, Portuguese and German that are no English word
# (written without accents: a word is matched with its accents dropped, as typed with or without them)
FOREIGN_WORDS = L._words("""
le les une des du au aux avec dans sur sous et est sont mettre mets mettez ajoute ajouter ajoutez supprime supprimer
supprimez enleve enlever enlevez retire retirer retirez remplace remplacer remplacez rends rendre rendez changez
changer transforme transformer transformez fais faire faites colorie peins par pour qui cette ces ce du
el los las una unos unas del por con y es quita quitar quite elimina eliminar elimine anade anadir anada agrega
agregar agregue reemplaza reemplazar reemplace cambia cambiar cambie pon poner ponga haz hacer haga convierte
convertir convierta pinta pintar pinte hazlo esta este estos estas que
il lo gli della dello delle nel nella sostituisci rimuovi aggiungi togli cambia trasforma rendi metti colora
um uma uns umas com remova remover adicione adicionar substitua substituir troque mude faca coloque
der das den dem des ein eine einen einem einer durch mit und ist sind zu vom zum zur auf entferne entfernen
ersetze ersetzen fuge fuege hinzu mache mach machen andere aendere farbe faerbe losche loesche setze stelle
verwandle wandle bitte
""") - {"a", "die", "son", "an", "in", "on", "do", "per"}
# English words that say a sentence is English: the rules' own words, determiners and common function words
ENGLISH_WORDS = RULE_WORDS | L.DETERMINERS | L._words("""
a an to of in on at it its is are be by for from into onto with and or but not no as so make let have put please
can could would should will me my you your we our i he she him her they them there here all more less very
""")


_ELIDED = re.compile(r"^(?:[ldjn]|qu|dell|nell|dall|sull)'[a-z]")


def _unaccented(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", word) if not unicodedata.combining(c))


def _latin(word: str) -> bool:
    """A word with a letter of the Latin script ('dog', 'café', 'l'arbre')."""
    return any(c.isalpha() and (c.isascii() or "LATIN" in unicodedata.name(c, "")) for c in word)


def not_english(toks: list[str]) -> str | None:
    """Why the sentence `toks` is not English (a line for the parse's `rule`), or None when it may be."""
    words = [t for t in toks if any(c.isalpha() for c in t)]
    if not words:
        return None
    if not any(_latin(w) for w in words):
        return "no word in the Latin script"
    low = [_unaccented(w.lower()) for w in words]
    # a French or Italian elision ("l'arbre", "d'un", "qu'il", "dell'auto") is a foreign article
    foreign = [w for w in low if w in FOREIGN_WORDS or _ELIDED.match(w)]
    english = sum(w in ENGLISH_WORDS for w in low)
    if foreign and len(foreign) > english:
        return "words of another language: " + ", ".join(dict.fromkeys(foreign[:5]))
    return None
