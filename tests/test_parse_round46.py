"""Forms the rules parser read wrong in round 46 (each case says what it was before): turn verbs that flip a thing,
present-tense action captions, 'give X Y' with a bare plural, arrow and 'to' lists, idioms of state, and the
instructions of a blind batch in the five benchmarks' styles."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from sigma.parse.rules import parse_rules


def _edits(text: str) -> list[tuple]:
    return [(e.edit_type, e.source, e.target) for e in parse_rules(text).edits]


@pytest.mark.parametrize("text,edits", [
    ("turn it upside down", [("global", None, None)]),                          # was attribute 'it upside down'
    ("turn the image upside down", [("global", None, None)]),                   # was attribute 'image upside down'
    ("Turn the photo upside-down", [("global", None, None)]),
    ("turn the picture 90 degrees clockwise", [("global", None, None)]),
    ("turn the chair upside down", [("attribute", "chair", "chair")]),          # was 'chair upside down'
    ("turn the car sideways", [("attribute", "car", "car")]),
    ("turn the sky red and turn the car upside down", [("attribute", "sky", "sky"), ("attribute", "car", "car")]),
    ("turn the car into a boat", [("replace", "car", "boat")]),                 # a turn into something stays
])
def test_a_turn_that_flips_or_rotates_reads_as_flip(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("The dog jumps over the fence", [("attribute", "dog", "dog")]),            # was a default add of 'dog jumps'
    ("The man jumps over the fence", [("attribute", "person", "person")]),
    ("the bird flies away", [("attribute", "bird", "bird")]),                   # was an add of 'bird flies away'
    ("the dog runs", [("attribute", "dog", "dog")]),
    ("the cat sleeps on the sofa", [("attribute", "cat", "cat")]),
    ("the man carries a box", [("add", None, "box")]),
    ("the ocean waves", [("add", None, "ocean waves")]),                        # a plural noun, not 'waves'
    ("bread rolls on a plate", [("add", None, "bread rolls")]),
    ("remove the dog. the cat sleeps.", [("remove", "dog", None), ("attribute", "cat", "cat")]),
])
def test_a_present_tense_action_ends_the_subject(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("give the red car racing stripes", [("add", None, "racing stripes")]),   # was 'red car racing stripes'
    ("give the dog sunglasses", [("add", None, "sunglasses")]),                # was attribute 'dog sunglasses'
    ("give the house solar panels", [("add", None, "solar panels")]),
    ("give the old man glasses", [("add", None, "glasses")]),
    ("give the car racing stripes and make the sky blue", [("add", None, "racing stripes"),
                                                            ("attribute", "sky", "sky")]),
    ("give the woman long hair", [("attribute", "woman", "woman")]),           # a look stays the woman's
    ("give the woman curly hair", [("attribute", "woman", "woman")]),
    ("give the image more contrast", [("global", None, None)]),
    ("give the photo vintage vibes", [("global", None, None)]),
    ("give the sky some stars", [("add", None, "stars")]),
])
def test_give_with_two_bare_objects_adds_the_second(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("red car → blue car", [("replace", "red car", "blue car")]),              # was attribute 'red car'
    ("red car -> blue car", [("replace", "red car", "blue car")]),
    ("red car => blue car", [("replace", "red car", "blue car")]),
    ("red car to blue car", [("replace", "red car", "blue car")]),
    ("car -> blue truck", [("replace", "car", "blue truck")]),                 # was attribute 'car'
    ("change the red car to blue car", [("replace", "red car", "blue car")]),  # as '... to a blue car'
    ("car -> red", [("attribute", "car", "car")]),                             # a value alone stays one
    ("change the wall to light blue", [("attribute", "wall", "wall")]),
    ("change the shirt to dark green color", [("attribute", "shirt", "shirt")]),
    ("change the dress to red velvet", [("attribute", "dress", "dress")]),
    ("turn the hair golden brown", [("attribute", "hair", "hair")]),
    ("sky -> sunset, car -> truck", [("replace", "sky", "sunset"), ("replace", "car", "truck")]),
])
def test_values_before_a_noun_name_a_new_thing(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("Put the house on fire", [("attribute", "house", "house")]),              # was an add of 'house'
    ("set fire to the house", [("attribute", "house", "house")]),              # was a replace of 'fire' by 'house'
    ("light the house on fire", [("attribute", "house", "house")]),            # was a default add of 'light'
    ("set the house on fire", [("attribute", "house", "house")]),
    ("put the image on fire", [("global", None, None)]),
    ("light the candles", [("attribute", "candles", "candles")]),              # was a default add of 'light'
    ("light up the room", [("attribute", "room", "room")]),
    ("light up the image", [("global", None, None)]),
    ("light the fireplace and add a cat", [("attribute", "fireplace", "fireplace"), ("add", None, "cat")]),
    ("light rain over the city", [("global", None, None)]),                    # 'light' as an adjective
    ("put a hat on the man", [("add", None, "hat")]),
])
def test_setting_a_thing_on_fire_or_lighting_it_is_its_look(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("make it a cat wearing a hat", [("replace", None, "cat")]),               # was global
    ("make it a cat with a hat", [("replace", None, "cat")]),
    ("turn it into a cat wearing a hat", [("replace", None, "cat")]),
    ("make it a cat sitting on a sofa", [("replace", None, "cat")]),
    ("make it a cat wearing a hat and add a dog", [("replace", None, "cat"), ("add", None, "dog")]),
    ("make it a cat in the style of van gogh", [("global", None, None)]),      # a style said after stays global
    ("make it a painting", [("global", None, None)]),
])
def test_make_it_a_thing_described_replaces_it(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("the woman should have red hair", [("attribute", "woman", "woman")]),     # was an add of 'red hair'
    ("let the woman have long hair", [("attribute", "woman", "woman")]),
    ("the man should have a red hat", [("add", None, "red hat")]),            # a new thing stays an add
    ("the tree has no leaves", [("remove", "leaves", None)]),                  # was an add of 'no leaves'
    ("Let the boat sail away", [("attribute", "boat", "boat")]),               # was 'boat sail away'
    ("make the water reflect the sunset", [("attribute", "water", "water")]),  # was 'water reflect'
    ("Remove the umbrella held by the woman", [("remove", "umbrella", None)]),  # was 'umbrella held'
    ("make the ice cream melt", [("attribute", "ice cream", "ice cream")]),    # was 'ice', 'cream' its colour
    ("make the wall cream", [("attribute", "wall", "wall")]),
    ("Make the clock show noon", [("attribute", "clock", "clock")]),           # was 'clock show noon'
    ("make the sign say hello", [("attribute", "sign", "sign")]),
    ("make the tv show a football game", [("attribute", "tv", "tv")]),
    ("can you make the guitar electric", [("attribute", "guitar", "guitar")]),  # was 'guitar electric'
    ("add an electric guitar", [("add", None, "electric guitar")]),
])
def test_blind_batch_misses(text, edits):
    assert _edits(text) == edits


_BLIND = [json.loads(line) for line in
          (Path(__file__).parent / "data" / "parse_round46_blind.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("row", _BLIND, ids=[r["instruction"][:40] for r in _BLIND])
def test_blind_batch_of_round46(row):
    # 183 instructions in the styles of MagicBrush, InstructPix2Pix, UltraEdit, AnyEdit and OmniEdit, written before
    # their fixes (12 of 131, then 5 of 60 misparsed; the 6 left as they were and two whose reading is a matter of
    # convention are not in the file, see docs/parsing-grounding.md)
    parse = parse_rules(row["instruction"])
    assert (parse.edit_type, parse.source, parse.target) == (row["edit_type"], row["source"], row["target"])
    assert [{"edit_type": e.edit_type, "source": e.source, "target": e.target} for e in parse.edits] == row["edits"]


@pytest.mark.parametrize("text,edits", [
    # each was one edit of 'dog add' (or the second edit lost): a run-on with no comma, or a mark in its place
    ("remove the dog add a cat", [("remove", "dog", None), ("add", None, "cat")]),
    ("remove the dog add a cat make the sky blue", [("remove", "dog", None), ("add", None, "cat"),
                                                    ("attribute", "sky", "sky")]),
    ("replace the car with a bike remove the tree", [("replace", "car", "bike"), ("remove", "tree", None)]),
    ("the dog should be removed add a cat", [("remove", "dog", None), ("add", None, "cat")]),
    ("add a 🐶 add a 🐱", [("add", None, "dog"), ("add", None, "cat")]),
    ("remove the dog - add a cat", [("remove", "dog", None), ("add", None, "cat")]),
    ("remove the dog / add a cat", [("remove", "dog", None), ("add", None, "cat")]),
    ("remove the dog | add a cat", [("remove", "dog", None), ("add", None, "cat")]),
    ("remove the dog & add a cat", [("remove", "dog", None), ("add", None, "cat")]),
    ("remove the dog + add a cat", [("remove", "dog", None), ("add", None, "cat")]),
    ("* remove the dog * add a cat", [("remove", "dog", None), ("add", None, "cat")]),
    ("make the sky blue make the grass green", [("attribute", "sky", "sky"), ("attribute", "grass", "grass")]),
    ("make the dog a cat add a bird", [("replace", "dog", "cat"), ("add", None, "bird")]),
    # no split: the verb is what someone is made to do, or it follows a word that leads it
    ("let the man paint the fence", [("attribute", "man", "man")]),
    ("make the kid paint the fence and add a dog", [("attribute", "kid", "kid"), ("add", None, "dog")]),
    ("I want you to add a cat", [("add", None, "cat")]),
    ("help me remove the dog", [("remove", "dog", None)]),
    ("can you remove the dog", [("remove", "dog", None)]),
    ("make the black and white photo colorful", [("global", None, None)]),
])
def test_edits_run_on_without_a_comma_are_split(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("remove the [dog]", [("remove", "dog", None)]),                           # each was an edit of nothing
    ("remove the {dog}", [("remove", "dog", None)]),
    ("replace [the dog] with [a cat]", [("replace", "dog", "cat")]),
    ("replace [[[dog]]] with {{cat}}", [("replace", "dog", "cat")]),
    ("add a <cat>", [("add", None, "cat")]),
    ("car - > bus", [("replace", "car", "bus")]),                              # an arrow's '>' stays one
    ("remove the (brown) dog", [("remove", "dog", None)]),                     # a parenthetical stays dropped
])
def test_brackets_around_a_concept_are_markup(text, edits):
    assert _edits(text) == edits


def test_brackets_keep_the_instruction_as_given():
    assert parse_rules("add a <cat>").instruction == "add a <cat>"


@pytest.mark.parametrize("text,edits", [
    ("i'd love to see a dragon flying over the castle", [("add", None, "dragon")]),   # a replace of "i'd love" by 'see'
    ("I'd like to have a dog here", [("add", None, "dog")]),
    ("we would like to see the dog removed", [("remove", "dog", None)]),
    ("I want to add a cat", [("add", None, "cat")]),
    ("the car is red now", [("attribute", "car", "car")]),                     # was a replace of the car by 'red now'
    ("make the sky blue again", [("attribute", "sky", "sky")]),                # was 'sky blue again'
    ("the car should be blue instead", [("attribute", "car", "car")]),
    ("the dog is now a cat", [("replace", "dog", "cat")]),
])
def test_wishes_to_see_and_when_words(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("remove the dog " * 200, [("remove", "dog", None)]),                      # and a remove of 'dog remove'
    ("replace the dog with a cat and " * 100, [("replace", "dog", "cat")]),    # and a replace of the dog by nothing
])
def test_a_sentence_cut_at_its_word_limit_ends_at_a_clause_break(text, edits):
    parse = parse_rules(text)
    assert _edits(text) == edits
    assert parse.rule.endswith("at most 256 words of a sentence read")


@pytest.mark.parametrize("text,edits", [
    ("Make the plane fly higher", [("attribute", "plane", "plane")]),          # was 'plane fly higher'
    ("make the horse run faster", [("attribute", "horse", "horse")]),
    ("the kite flies higher", [("attribute", "kite", "kite")]),
    ("add a high jump bar", [("add", None, "high jump bar")]),
])
def test_how_a_thing_moves_ends_the_subject(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("there should be no people", [("remove", "people", None)]),               # was an add of 'no people'
    ("What if there were no people?", [("remove", "people", None)]),
    ("there are no cars on the road", [("remove", "cars", None)]),
    ("there shouldn't be any cars", [("remove", "cars", None)]),               # was an add of "shouldn't"
    ("there should not be any cars", [("remove", "cars", None)]),
    ("there should be some birds", [("add", None, "birds")]),
    ("The cat, which is sitting on the sofa, should be removed", [("remove", "cat", None)]),   # a default add
    ("remove the dog, which is brown, and add a cat", [("remove", "dog", None), ("add", None, "cat")]),
    ("replace the car, which is parked, with a bike", [("replace", "car", "bike")]),
    ("add a cat, which should be black", [("add", None, "cat")]),
    ("Let's see the cat wearing a crown", [("add", None, "crown")]),           # was a default add of 'see'
    ("let's see the dog running on the beach", [("attribute", "dog", "dog")]),
    ("see the dog? remove it", [("remove", None, None)]),
])
def test_there_be_none_asides_and_see_x_doing(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    # was an attribute edit of the woman, the hat lost
    ("Make the woman in the red dress wear a hat", [("add", None, "hat")]),
    ("Make the woman in the red dress, who is standing next to the fountain, wear a hat and hold a bouquet of flowers",
     [("add", None, "hat"), ("add", None, "flowers")]),
    ("make the dog on the left bark", [("attribute", "dog", "dog")]),
    ("make the man in a suit", [("add", None, "suit")]),
    ("make the dog on the left a cat", [("replace", "dog", "cat")]),
    ("remove everything in the background", [("remove", "background", None)]),          # was 'everything'
    ("Replace everything in the background with a jungle", [("replace", "background", "jungle")]),
    ("remove everything in the box", [("remove", "everything", None)]),
    ("add more light", [("global", None, None)]),                                       # was an add of 'light'
    ("add a little bit more light", [("global", None, None)]),                          # was 'bit light'
    ("Can you add a little bit more light to the left side of the picture?", [("global", None, None)]),
    ("add more light to the left side", [("global", None, None)]),                      # was 'left side'
    ("add a light on the table", [("add", None, "light")]),                             # a lamp (was the table's)
    ("add light to the room", [("attribute", "room", "room")]),
    ("add a touch of red to the dress", [("attribute", "dress", "dress")]),             # was an add of 'touch'
    ("add a hint of pink to the sky", [("attribute", "sky", "sky")]),
])
def test_make_x_placed_doing_everything_in_and_light(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("the dog on the left should be removed", [("remove", "dog", None)]),              # was a default add of 'dog'
    ("The man in the car should be smiling", [("attribute", "person", "person")]),     # a default add of 'man'
    ("the man with the hat should be removed", [("remove", "man", None)]),             # was an add of 'hat'
    ("the cat on the sofa should be a dog", [("replace", "cat", "dog")]),
    ("the car in the background should be red", [("attribute", "car", "car")]),
    ("the man in the car on the left should be removed", [("remove", "man", None)]),
    ("a cat with a hat", [("add", None, "hat")]),                                      # a caption stays
    ("a dog on the beach", [("add", None, "dog")]),
    ("What if the bridge collapsed?", [("attribute", "bridge", "bridge")]),            # a default add of 'what'
])
def test_a_place_after_the_subject_says_which(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("Could we possibly make the dog look a bit more like a wolf?", [("replace", "dog", "wolf")]),  # by 'bit'
    ("make the dog look a little like a wolf", [("replace", "dog", "wolf")]),   # was attribute, no target
    ("make the sky a bit brighter", [("attribute", "sky", "sky")]),
    ("make it look a bit like a painting", [("global", None, None)]),
])
def test_a_degree_before_like_is_no_thing(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("the girl is now jumping", [("attribute", "person", "person")]),                  # was attribute 'girl'
    ("the man is still wearing a hat", [("add", None, "hat")]),
    ("Replace the content of the painting with a landscape", [("replace", "painting", "landscape")]),  # 'content'
    ("increase the size of the moon", [("attribute", "moon", "moon")]),                # was attribute 'size'
    ("change the size of the car", [("attribute", "car", "car")]),
    ("the boy kicks the ball", [("attribute", "person", "person")]),                   # a default add of 'boy kicks'
    ("have the sun rise", [("attribute", "sun", "sun")]),                              # was 'sun rise'
    ("the sun rises over the hills", [("attribute", "sun", "sun")]),
])
def test_now_jumping_size_of_and_kicks_the(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("make the dog a cat and the bird a plane", [("replace", "dog", "cat"), ("replace", "bird", "plane")]),
    ("make the dog a cat 🐱 and the bird a plane ✈️", [("replace", "dog", "cat"), ("replace", "bird", "plane")]),
    ("make the dog a cat, the bird a plane, and the car a boat", [("replace", "dog", "cat"),
                                                                   ("replace", "bird", "plane"),
                                                                   ("replace", "car", "boat")]),
    ("make the dog a cat and a mouse", [("replace", "dog", "cat and mouse")]),     # one object, two things
    ("I HATE THE CAR, REMOVE IT", [("remove", "car", None)]),                      # was a remove of nothing named
    ("i don't like the hat. replace it with a crown", [("replace", "hat", "crown")]),
    ("I hate the car", [("global", None, None)]),
    ("plz make the car go faster", [("attribute", "car", "car")]),                 # was 'car go faster'
    ("the go kart", [("add", None, "go kart")]),
    ("make the man go away", [("remove", "man", None)]),                           # was an action of 'person'
    ("put the cat ontop of the table", [("add", None, "cat")]),                    # was 'cat ontop'
])
def test_make_gapping_dislikes_and_go(text, edits):
    assert _edits(text) == edits


@pytest.mark.parametrize("text,edits", [
    ("Give me a version in black and white", [("global", None, None)]),           # was an attribute edit of 'me'
    ("give me a vintage look", [("global", None, None)]),
    ("give me a cat", [("add", None, "cat")]),
    ("give me a version without the people", [("remove", "people", None)]),
    ("the apple should be half eaten", [("attribute", "apple", "apple")]),        # a replace by 'half eaten'
    ("the glass should be half full", [("attribute", "glass", "glass")]),
])
def test_give_me_a_look_and_half_a_state(text, edits):
    assert _edits(text) == edits
