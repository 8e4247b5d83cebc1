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


@pytest.mark.parametrize("text,edits", [
    ("make the dress flowing and elegant", [("attribute", "dress", "dress")]),     # was 'dress flowing and elegant'
    ("make the dress more elegant", [("attribute", "dress", "dress")]),
    ("make the car ugly", [("attribute", "car", "car")]),                          # was 'car ugly'
    ("make the room cozy", [("attribute", "room", "room")]),
    ("make the woman beautiful", [("attribute", "woman", "woman")]),
    ("make the girl prettier", [("attribute", "girl", "girl")]),
    ("make the house look spooky", [("attribute", "house", "house")]),             # was a replace by 'spooky'
    ("add a cute dog", [("add", None, "cute dog")]),
    ("replace the plain wall with a rustic brick wall", [("replace", "plain wall", "rustic brick wall")]),
])
def test_an_adjective_of_look_is_a_value_not_part_of_the_concept(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("the car is ugly", [("global", None, None)]),                                 # was a replace of the car by 'ugly'
    ("the car looks so boring", [("global", None, None)]),
    ("the sky is boring, make it blue", [("attribute", "sky", "sky")]),
    ("the dog is ugly. replace it with a cat", [("replace", "dog", "cat")]),
    ("the car should be ugly", [("attribute", "car", "car")]),                    # asked for, not judged
    ("the car is red", [("attribute", "car", "car")]),
])
def test_a_judgement_names_no_edit(text, edits):
    parse = parse_rules(text)
    assert [(e.edit_type, e.source, e.target) for e in parse.edits] == edits
    if edits == [("global", None, None)]:
        assert parse.rule == "no-edit-named: a judgement"


@pytest.mark.parametrize("text,edits", [
    ("make the car red and turn it into a truck", [("attribute", "car", "car"), ("replace", "car", "truck")]),
    ("make the car red. Then turn it into a truck", [("attribute", "car", "car"), ("replace", "car", "truck")]),
    ("paint the wall white and replace it with bricks", [("attribute", "wall", "wall"), ("replace", "wall", "bricks")]),
    ("make the car red and make it shiny", [("attribute", "car", "car")]),        # the car's look again
    ("add a dog and make it brown", [("add", None, "dog")]),
    ("add a hat and turn it into a crown", [("add", None, "hat")]),
])
def test_it_after_an_attribute_edit_is_that_object(text, edits):
    # 'turn it into a truck' was a global edit ('it' read as the picture)
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("make it a cat", [("replace", None, "cat")]),                                # was global
    ("make it a red sports car", [("replace", None, "red sports car")]),
    ("turn it into a cat", [("replace", None, "cat")]),
    ("make it a painting", [("global", None, None)]),
    ("make it a sunny day", [("global", None, None)]),
    ("make it a bit brighter", [("global", None, None)]),
    ("make it a beach", [("global", None, None)]),
    ("turn it into a photo", [("global", None, None)]),
    ("add a dog and make it a puppy", [("add", None, "dog")]),
])
def test_it_becoming_a_thing_is_a_replace_of_nothing_named(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("no such file", [("global", None, None)]),                                   # was a remove of 'such file'
    ("No such file or directory", [("global", None, None)]),
    ("no people", [("remove", "people", None)]),
])
def test_no_such_names_no_edit(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    # the second arrow was lost (read into the first clause, or the end of the text)
    ("sky -> sunset, car -> truck", [("replace", "sky", "sunset"), ("replace", "car", "truck")]),
    ("sky -> sunset and car -> truck", [("replace", "sky", "sunset"), ("replace", "car", "truck")]),
    ("sky → sunset, car → truck", [("replace", "sky", "sunset"), ("replace", "car", "truck")]),
    ("car → red, sky → purple", [("attribute", "car", "car"), ("attribute", "sky", "sky")]),
    ("dog => cat", [("replace", "dog", "cat")]),                                   # was an add of 'dog'
    ("dog = cat", [("add", None, "dog")]),
    ("sky -> sunset, add a moon", [("replace", "sky", "sunset"), ("add", None, "moon")]),
    ("add a cat, a dog", [("add", None, "cat"), ("add", None, "dog")]),
])
def test_a_list_of_arrows_gives_an_edit_per_arrow(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    # a later sentence of a look alone was lost; a first one was a default add of 'brighter', of 'contrast'
    ("Replace the dog with a cat. Brighter.", [("replace", "dog", "cat"), ("global", None, None)]),
    ("Replace the dog with a cat. More contrast.", [("replace", "dog", "cat"), ("global", None, None)]),
    ("remove the car. Black and white.", [("remove", "car", None), ("global", None, None)]),
    ("remove the car. Less noise.", [("remove", "car", None), ("global", None, None)]),
    ("Brighter.", [("global", None, None)]),
    ("More contrast.", [("global", None, None)]),
    ("add a dog. Brown.", [("add", None, "dog")]),                                 # the dog's colour
    ("Red car.", [("add", None, "red car")]),
    ("remove the car. Thanks!", [("remove", "car", None)]),
])
def test_a_sentence_of_a_look_alone_is_the_pictures_look(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("Blur the background", [("attribute", "background", "background")]),        # was global (a keyword)
    ("blur the license plate", [("attribute", "license plate", "license plate")]),
    ("blur out the faces", [("attribute", "faces", "faces")]),
    ("pixelate the face", [("attribute", "face", "face")]),                      # was an add of 'pixelate'
    ("blur the image", [("global", None, None)]),
    ("remove the blur", [("global", None, None)]),
])
def test_blur_is_a_verb_of_its_object(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    # an adverb was read into the concept ('sky slightly', 'car quickly'), a degree word was the target ('too')
    ("make the sky slightly brighter", [("attribute", "sky", "sky")]),
    ("brighten the sky slightly", [("attribute", "sky", "sky")]),
    ("remove the car quickly", [("remove", "car", None)]),
    ("sharpen the photo slightly", [("global", None, None)]),
    ("the car is too big", [("attribute", "car", "car")]),
    ("make the friendly dog blue", [("attribute", "friendly dog", "friendly dog")]),
    ("add a butterfly", [("add", None, "butterfly")]),
    ("remove the family", [("remove", "family", None)]),
])
def test_an_adverb_ends_the_concept(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("turn the apple into an orange", [("replace", "apple", "orange")]),          # was the apple's colour
    ("make the flower a rose", [("replace", "flower", "rose")]),
    ("turn the apple orange", [("attribute", "apple", "apple")]),
    ("change the apple to orange", [("attribute", "apple", "apple")]),
])
def test_a_colour_after_a_is_a_thing(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("Use a cat instead of the dog", [("replace", "dog", "cat")]),               # was a default add of 'use'
    ("have a cat instead of the dog", [("replace", "dog", "cat")]),              # was an attribute of the cat
    ("I want a cat instead of the dog", [("replace", "dog", "cat")]),            # was an add of the cat
    ("let's have a cat instead of the dog", [("replace", "dog", "cat")]),
    ("use a red car instead of the blue one", [("replace", "blue car", "red car")]),
])
def test_x_instead_of_y_after_a_lead_verb_is_a_replace(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("The sky should be filled with stars", [("add", None, "stars")]),           # was an attribute of the sky
    ("the table is covered with books", [("add", None, "books")]),
    ("the field should be covered in snow", [("add", None, "snow")]),
    ("the room should be full of balloons", [("add", None, "balloons")]),
])
def test_filled_with_adds_the_filler(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    # the place clause was read as the new background, or the new thing as the old one's look
    ("Make the painting on the wall a mirror", [("replace", "painting", "mirror")]),
    ("make the dog on the left a cat", [("replace", "dog", "cat")]),
    ("make the man in the red shirt a woman", [("replace", "man", "woman")]),
    ("make the cat on the sofa a lion", [("replace", "cat", "lion")]),
    ("make the lamp next to the bed a candle", [("replace", "lamp", "candle")]),
    ("make the cup on the table red", [("attribute", "cup", "cup")]),
    ("make the dog on the beach", [("replace", "background", "beach")]),
])
def test_make_x_somewhere_a_y_replaces_x(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("Shrink the car", [("attribute", "car", "car")]),                           # was an add of 'shrink'
    ("Enlarge the moon", [("attribute", "moon", "moon")]),
    ("resize the image", [("global", None, None)]),
    ("give the woman long hair", [("attribute", "woman", "woman")]),              # was 'woman long hair'
    ("give the car red stripes", [("attribute", "car", "car")]),
    ("give him long hair", [("attribute", "person", "person")]),                  # was 'him'
    ("give the man a beard", [("add", None, "beard")]),
    ("Change the style to Van Gogh", [("global", None, None)]),                   # was an attribute of 'style'
    ("change the art style to anime", [("global", None, None)]),
    ("change the style of the car to retro", [("attribute", "car", "car")]),
])
def test_resize_give_and_style_forms(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    # a request to edit the picture, then the edit: they were global edits of the image
    ("Edit the image so that the car is red.", [("attribute", "car", "car")]),
    ("Modify the image to include a dog.", [("add", None, "dog")]),
    ("Alter the picture by adding a cat.", [("add", None, "cat")]),
    ("Please edit this image to remove the people.", [("remove", "people", None)]),
    ("edit the photo by removing the car", [("remove", "car", None)]),
    ("Update the photo to make the sky blue", [("attribute", "sky", "sky")]),
    ("Change the image to a painting", [("global", None, None)]),
    ("edit the image", [("global", None, None)]),
    # what the picture shows now is no edit (it was an attribute edit of 'image')
    ("The image shows a kitchen. Add a microwave on the counter.", [("add", None, "microwave")]),
    ("the photo should show a beach", [("global", None, None)]),
    ("the sign shows STOP", [("attribute", "sign", "sign")]),
])
def test_edit_the_image_so_that_leads_to_the_edit(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("Whiten the teeth.", [("attribute", "teeth", "teeth")]),                    # was an add of 'whiten'
    ("Smooth the skin.", [("attribute", "skin", "skin")]),
    ("Tidy the desk", [("attribute", "desk", "desk")]),
    ("Clean up the room", [("attribute", "room", "room")]),                      # was a remove of the room
    ("clean up the mess", [("remove", "mess", None)]),
    ("Replace the tree with nothing", [("remove", "tree", None)]),               # was a replace by 'nothing'
    ("replace the car with empty space", [("remove", "car", None)]),
    ("replace the man with the background", [("remove", "man", None)]),
])
def test_look_verbs_clean_up_and_replace_with_nothing(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("The woman's dress should be changed to a red gown.", [("replace", "dress", "red gown")]),   # was the look
    ("the car should be changed to a truck", [("replace", "car", "truck")]),
    ("the car should be changed to red", [("attribute", "car", "car")]),
    ("the dog has been changed to a cat", [("replace", "dog", "cat")]),
    # a second subject with its wear verb: the object was 'scarf and cat wear', the bow lost
    ("make the dog wear a scarf and the cat wear a bow", [("add", None, "scarf"), ("add", None, "bow")]),
    ("have the man hold a cup and the woman hold a phone", [("add", None, "cup"), ("add", None, "phone")]),
    ("let the man wear a hat and the woman a scarf", [("add", None, "hat"), ("add", None, "scarf")]),
    ("add a cat and a dog", [("add", None, "cat and dog")]),
])
def test_passive_changed_to_and_a_second_wearer(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("Maybe add some clouds?", [("add", None, "clouds")]),                        # was 'maybe add clouds'
    ("add clouds maybe", [("add", None, "clouds")]),                              # was 'clouds maybe'
    ("try adding a bird", [("add", None, "bird")]),                               # was an add of 'try'
    ("How about making the car red?", [("attribute", "car", "car")]),             # was global
    ("What about adding a hat to the man?", [("add", None, "hat")]),
    ("Add: a cat", [("add", None, "cat")]),                                       # was an add of nothing
    ("Remove: the dog", [("remove", "dog", None)]),
    ("Task: remove the dog", [("remove", "dog", None)]),                          # was an add of 'task'
    ("replace cat -> dog", [("replace", "cat", "dog")]),                          # the dog was lost
    ("replace the cat → a dog", [("replace", "cat", "dog")]),
])
def test_chat_wording_leads_to_the_edit(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("make the table made of glass", [("attribute", "table", "table")]),          # was 'table made'
    ("add a table made of glass", [("add", None, "table")]),                      # was 'table made'
    ("replace the chair with one made of wood", [("replace", "chair", "chair")]), # was a replace by 'made'
    ("make the horse gallop", [("attribute", "horse", "horse")]),                 # was 'horse gallop'
    ("make the house on fire", [("attribute", "house", "house")]),                # was the background by 'fire'
])
def test_made_of_actions_and_on_fire(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("same but with a dog", [("add", None, "dog")]),                              # was an add of 'same'
    ("the same but without the car", [("remove", "car", None)]),
    ("same but the car is red", [("attribute", "car", "car")]),
    ("Make a version where the car is red", [("attribute", "car", "car")]),       # was an attribute of 'version'
    ("give me a version without the people", [("remove", "people", None)]),      # was an add of 'give me'
    ("make a version of the image with a cat", [("add", None, "cat")]),
    ("Create a version of this image where the sky is pink", [("attribute", "sky", "sky")]),
    ("make the dog the same color as the cat", [("attribute", "dog", "dog")]),
])
def test_same_but_and_a_version_with(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("make the man in a suit", [("add", None, "suit")]),                         # was the background by 'suit'
    ("make the woman in a red dress", [("add", None, "red dress")]),
    ("make the man in the park", [("replace", "background", "park")]),
    ("show the dog running", [("attribute", "dog", "dog")]),                     # was an add of 'show'
    ("show the man in a tuxedo", [("add", None, "tuxedo")]),
    ("Imagine the cat as a lion", [("replace", "cat", "lion")]),                 # was an add of 'imagine'
    ("imagine the house on fire", [("attribute", "house", "house")]),
    ("Show the man without glasses", [("remove", "glasses", None)]),
    ("Depict the house in winter", [("global", None, None)]),
])
def test_dressed_in_and_show_imagine_x(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("Make this better", [("global", None, None)]),                               # was an attribute of 'better'
    ("make the car better", [("attribute", "car", "car")]),
    ("add a good dog", [("add", None, "good dog")]),
])
def test_better_is_a_value(text, edits):
    assert _edits(text) == edits
