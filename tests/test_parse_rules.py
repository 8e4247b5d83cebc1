"""The rules parser on the real dev set, on our own held-out phrasings, and its building blocks."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from killers import at_first_temp_rename

from sigma.cli import main
from sigma.errors import UnknownNameError
from sigma.parse import concept_match, get_parser, normalize_concept, parse_instruction
from sigma.parse.evaluate import score_parser
from sigma.parse.jsonrepair import repair_json
from sigma.parse.llm import parse_answer
from sigma.parse.phrases import extract_phrase, tokenize
from sigma.parse.rules import parse_rules
from sigma.text import replace_surrogates

SHARED = Path(os.environ.get("SIGMA_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
DEV = SHARED / "data" / "instructions" / "dev.jsonl"

# Written by us, never tuned against dev.jsonl: casual requests (the phrasing), templated
# benchmark styles, deictic KRIS-like and long ImgEdit-like sentences. (text, type, source, target)
HELD_OUT = [
    ("make it snowy", "global", None, None),
    ("Make it look like winter.", "global", None, None),
    ("turn the car red", "attribute", "car", "car"),
    ("Turn the red car into a blue one", "attribute", "red car", "red car"),
    ("have the man wear a hat", "add", None, "hat"),
    ("Let the woman hold an umbrella.", "add", None, "umbrella"),
    ("what if the dog were a cat", "replace", "dog", "cat"),
    ("What if the house was made of gingerbread?", "attribute", "house", "house"),
    ("add a bird on the branch", "add", None, "bird"),
    ("remove the people in the background", "remove", "people", None),
    ("replace the sofa with a wooden bench", "replace", "sofa", "wooden bench"),
    ("let the sky be sunset", "replace", "sky", "sunset"),      # issue 11: the sky becoming a scene
    ("Please erase the watermark in the corner.", "remove", "watermark", None),
    ("get rid of the trash can next to the bench", "remove", "trash can", None),
    ("Delete the two cars parked on the street", "remove", "cars", None),
    ("Take away the lamp.", "remove", "lamp", None),
    ("Put a vase of flowers on the table", "add", None, "vase"),
    ("insert a small boat floating on the lake", "add", None, "boat"),
    ("Could you add some clouds to the sky?", "add", None, "clouds"),
    ("Swap the apple for an orange", "replace", "apple", "orange"),
    ("Substitute the bicycle with a motorcycle.", "replace", "bicycle", "motorcycle"),
    ("Change the cat into a tiger", "replace", "cat", "tiger"),
    ("Transform the horse into a unicorn.", "replace", "horse", "unicorn"),
    ("Make the dog a wolf", "replace", "dog", "wolf"),
    ("the bus should be yellow", "attribute", "bus", "bus"),
    ("Change the colour of the woman's dress to red.", "attribute", "dress", "dress"),
    ("Recolor the door green", "attribute", "door", "door"),
    ("Paint the fence white.", "attribute", "fence", "fence"),
    ("Make the man smile", "attribute", "person", "person"),
    ("Have the girl raise her hand.", "attribute", "person", "person"),
    ("Make the flowers wilted", "attribute", "flowers", "flowers"),
    ("Turn the photo into a Van Gogh painting", "global", None, None),
    ("Convert the image to black and white.", "global", None, None),
    ("Make it look like a watercolor painting", "global", None, None),
    ("Apply a cartoon style to the whole image.", "global", None, None),
    ("make it night", "global", None, None),
    ("Remove the fog from the photo.", "global", None, None),
    ("Increase the brightness of the image", "global", None, None),
    ("Change the background to a snowy mountain.", "replace", "background", "snowy mountain"),
    ("Replace the background with a city at night", "replace", "background", "city"),
    ("Give the man a pair of sunglasses", "add", None, "sunglasses"),
    ("Give the car a shiny chrome finish", "attribute", "car", "car"),
    ("There should be a rainbow in the sky", "add", None, "rainbow"),
    ("a cat wearing sunglasses", "add", None, "sunglasses"),
    ("Change the season to autumn", "global", None, None),
    ("Make the tree's leaves orange", "attribute", "leaves", "leaves"),
    ("Change the hair of the girl to blonde", "attribute", "hair", "hair"),
    ("Remove the man's glasses", "remove", "glasses", None),
    ("Add snow", "global", None, None),
    ("Replace the cup on the desk by a teapot.", "replace", "cup", "teapot"),
    ("Make the car bigger", "attribute", "car", "car"),
    ("Turn the lights off", "attribute", "lights", "lights"),
    ("Change this mug to a glass.", "replace", "mug", "glass"),
    ("Change the wall texture to brick", "attribute", "wall", "wall"),
    ("Erase all the birds from the sky", "remove", "birds", None),
    ("Add two ducks swimming in the pond.", "add", None, "ducks"),
    ("Make the water frozen", "attribute", "water", "water"),
    ("the dog should be removed", "remove", "dog", None),
    ("Make the hedgehog in Italy.", "replace", "background", "italy"),
    ("Replace the old man with a young boy", "replace", "old man", "young boy"),
    ("Change the apples in the basket to pears", "replace", "apples", "pears"),
    ("Render the scene in a cyberpunk style.", "global", None, None),
    ("Sharpen the photo", "global", None, None),
    ("Remove the rain streaks from the picture", "global", None, None),
    ("Change the lighting to golden hour", "global", None, None),
    # pose/expression ("action") edits of people: the concept is "person" (dev.jsonl's convention)
    ("Make the dog sit down.", "attribute", "dog", "dog"),
    ("Change the pose of the woman to sitting", "attribute", "person", "person"),
    ("Adjust the brightness of the image to make it clearer.", "global", None, None),
    ("Increase the brightness of the sky", "attribute", "sky", "sky"),
    ("Remove the low light from the image.", "global", None, None),
    # a second batch, written and run blind (4 concept misses on first run, fixed by general rules)
    ("Add a red kite flying high in the sky above the trees.", "add", None, "red kite"),
    ("Remove the lamp post standing on the left side of the street.", "remove", "lamp post", None),
    ("Replace the wooden chair in the image with a modern office chair.", "replace", "wooden chair",
     "modern office chair"),
    ("Change the background of this photo to desert", "replace", "background", "desert"),
    ("Transfer the image into a vibrant pop-art comic style.", "global", None, None),
    ("replace horse with cow", "replace", "horse", "cow"),
    ("Change this cup to red.", "attribute", "cup", "cup"),
    ("Remove one banana.", "remove", "banana", None),
    ("make the cat in Paris.", "replace", "background", "paris"),
    ("add a crown on the dog head.", "add", None, "crown"),
    ("Change the woman's hair color to pink.", "attribute", "hair", "hair"),
    ("Change the material of the table to marble.", "attribute", "table", "table"),
    ("Make the man raise both arms above his head.", "attribute", "person", "person"),
    ("Change the beach setting in the picture to a snowy mountain landscape.", "replace", "background",
     "snowy mountain"),
    ("Change the city background from daytime to a starry night sky.", "replace", "background",
     "starry night sky"),
    ("Add a hot air balloon floating in the sky near the top of the image.", "add", None, "hot air balloon"),
    ("Remove the boat sailing on the lake, keeping the water calm.", "remove", "boat", None),
    ("Replace the cat sitting on the sofa with a small puppy.", "replace", "cat", "puppy"),
    ("Change the T-shirt's color to green.", "attribute", "t-shirt", "t-shirt"),
    ("Remove the three candles on the cake.", "remove", "candles", None),
    ("Add a group of penguins walking on the ice.", "add", None, "penguins"),
    ("replace the clock to a mirror.", "replace", "clock", "mirror"),
    ("Change the surface of the table to glass.", "attribute", "table", "table"),
    ("Make the woman look surprised.", "attribute", "person", "person"),
    ("Change the person's expression to a smile.", "attribute", "person", "person"),
    ("Add a couple sitting on the bench", "add", None, "couple"),
    ("Change the sky to a sunset", "replace", "sky", "sunset"),  # issue 11 (was attribute sky/sky)
    # a third batch, run blind (4 type and 1 concept misses on first run, fixed by general rules)
    ("Make the image brighter.", "global", None, None),
    ("Enhance the low-light image.", "global", None, None),
    ("Remove the raindrops from the image.", "global", None, None),
    ("Make the image clearer.", "global", None, None),
    ("Deblur the image.", "global", None, None),
    ("Change the image to Ukiyo-e style", "global", None, None),
    ("Change the image to pixel art style", "global", None, None),
    ("Transfer the image into a soft pastel anime style.", "global", None, None),
    ("Add a clock to the right of the window", "add", None, "clock"),
    ("Add a dog to the bottom of the stairs", "add", None, "dog"),
    ("Add four oranges to the plate", "add", None, "oranges"),
    ("Remove the television from the image", "remove", "television", None),
    ("replace bus with train", "replace", "bus", "train"),
    ("replace teddy bear with robot", "replace", "teddy bear", "robot"),
    ("Change the color of the bus to purple", "attribute", "bus", "bus"),
    ("Change the background of this photo to volcano", "replace", "background", "volcano"),
    ("Change this apple to green.", "attribute", "apple", "apple"),
    ("Change the left sock to blue.", "attribute", "left sock", "left sock"),
    ("Remove two pencils.", "remove", "pencils", None),
    ("Add one more egg.", "add", None, "egg"),
    ("Change the girl's expression to a big smile.", "attribute", "person", "person"),
    ("Make the boy in the image wave his hand.", "attribute", "person", "person"),
    ("Make the person in the picture jump in the air.", "attribute", "person", "person"),
    ("Change the woman's pose so that she is sitting on the chair.", "attribute", "person", "person"),
    ("Change the texture of the sofa to leather.", "attribute", "sofa", "sofa"),
    ("Change the material of the vase to a transparent glass.", "attribute", "vase", "vase"),
    ("Change the color of the bird's feathers to bright yellow.", "attribute", "feathers", "feathers"),
    ("Replace the bicycle leaning against the wall with a red scooter.", "replace", "bicycle", "red scooter"),
    ("Replace the mountains in the background with a city skyline.", "replace", "mountains", "city skyline"),
    ("Remove the small dog lying on the grass near the fence.", "remove", "dog", None),
    ("Add a wooden bench under the tree on the left side of the image.", "add", None, "wooden bench"),
    ("Change the sunny beach background in the image to a rainy forest.", "replace", "background", "rainy forest"),
    ("Change the indoor setting to an outdoor garden environment.", "replace", "background", "outdoor garden"),
    ("Change the background from a desert to a snowy forest.", "replace", "background", "snowy forest"),
    ("make the panda in the snow.", "replace", "background", "snow"),
    ("remove the bowl.", "remove", "bowl", None),
    ("replace the cup to a vase.", "replace", "cup", "vase"),
    ("add a rainbow.", "add", None, "rainbow"),
    ("Change the hat on the man to a red one.", "attribute", "hat", "hat"),
    ("Turn the white horse black.", "attribute", "white horse", "white horse"),
    # a fourth batch, run blind (1 type miss of 36 on first run)
    ("Add a vase of sunflowers on the dining table near the window.", "add", None, "vase"),
    ("Add a lighthouse on the cliff in the distance.", "add", None, "lighthouse"),
    ("Add a cat to the top of the car", "add", None, "cat"),
    ("Add a butterfly", "add", None, "butterfly"),
    ("Add three balloons to the image", "add", None, "balloons"),
    ("add a pair of glasses on the cat.", "add", None, "glasses"),
    ("Remove the woman holding the umbrella on the right.", "remove", "woman", None),
    ("Remove the car parked in front of the house.", "remove", "car", None),
    ("Remove the text in the upper left corner of the image.", "remove", "text", None),
    ("Remove the bench from the image", "remove", "bench", None),
    ("Remove one cookie.", "remove", "cookie", None),
    ("remove the man on the left.", "remove", "man", None),
    ("Replace the sailboat on the water with a large cruise ship.", "replace", "sailboat", "cruise ship"),
    ("Replace the coffee cup in the image with a glass of orange juice.", "replace", "coffee cup", "glass"),
    ("replace elephant with horse", "replace", "elephant", "horse"),
    ("replace the cake to a pizza.", "replace", "cake", "pizza"),
    ("Change the color of the fire hydrant to blue", "attribute", "fire hydrant", "fire hydrant"),
    ("Change the color of the man's jacket to orange.", "attribute", "jacket", "jacket"),
    ("Change the car's paint to a glossy black.", "attribute", "car", "car"),
    ("Change this scarf to red.", "attribute", "scarf", "scarf"),
    ("Change the roof of the house to green.", "attribute", "roof", "roof"),
    ("Change the texture of the wall to rough stone.", "attribute", "wall", "wall"),
    ("Make the dog sit down.", "attribute", "dog", "dog"),
    ("Make the woman close her eyes.", "attribute", "person", "person"),
    ("Change the man's posture to leaning against the wall.", "attribute", "person", "person"),
    ("Change the background of this photo to underwater", "replace", "background", "underwater"),
    ("Change the park in the picture from summer to a snowy winter landscape.",
     "replace", "background", "snowy winter"),
    ("Change the background to a starry night sky.", "replace", "background", "starry night sky"),
    ("Change the living room setting to a cozy cabin interior.", "replace", "background", "cozy cabin interior"),
    ("Transfer the image into a bold ink-wash painting style.", "global", None, None),
    ("Change the image to sketch style", "global", None, None),
    ("Remove the noise in the picture.", "global", None, None),
    ("make the girl in the forest.", "replace", "background", "forest"),
    ("replace the bird to a butterfly.", "replace", "bird", "butterfly"),
    ("Change the green leaves to autumn orange.", "attribute", "green leaves", "green leaves"),
    ("Put sunglasses on the dog", "add", None, "sunglasses"),
    ("make the car in the image red", "attribute", "car", "car"),
    # a fifth batch, run blind (1 type and 1 concept miss of 36 on first run)
    ("Add a bottle to the left of the cup", "add", None, "bottle"),
    ("Add a clock to the top of the building", "add", None, "clock"),
    ("Add five stars to the sky", "add", None, "stars"),
    ("Add a small wooden boat floating on the river near the bridge.", "add", None, "wooden boat"),
    ("Add a flock of birds flying over the mountains in the background.", "add", None, "birds"),
    ("Add a snowman standing in the middle of the yard.", "add", None, "snowman"),
    ("Remove the motorcycle from the image", "remove", "motorcycle", None),
    ("Remove the tall tree on the right side of the image.", "remove", "tall tree", None),
    ("Remove the people walking on the sidewalk in the background.", "remove", "people", None),
    ("Remove one slice of bread.", "remove", "bread", None),
    ("remove the little girl.", "remove", "girl", None),
    ("Remove the signboard (billboard) above the shop.", "remove", "signboard", None),
    ("replace sandwich with pizza", "replace", "sandwich", "pizza"),
    ("Replace the lamp on the bedside table with a potted plant.", "replace", "lamp", "potted plant"),
    ("Replace the horse in the image with a majestic white unicorn.", "replace", "horse", "majestic white unicorn"),
    ("replace the man to a robot.", "replace", "man", "robot"),
    ("Change the color of the boat to white", "attribute", "boat", "boat"),
    ("Change the color of the flower petals to pink.", "attribute", "flower petals", "flower petals"),
    ("Change the vase's material to shiny ceramic.", "attribute", "vase", "vase"),
    ("Change the texture of the pillow to soft velvet.", "attribute", "pillow", "pillow"),
    ("Change these tulips to yellow.", "attribute", "tulips", "tulips"),
    ("Change this car to silver.", "attribute", "car", "car"),
    ("Change the bird's feathers to a vibrant red color.", "attribute", "feathers", "feathers"),
    ("Make the person wave with the right hand.", "attribute", "person", "person"),
    ("Make the person look up at the sky.", "attribute", "person", "person"),
    ("Change the person's expression from neutral to laughing.", "attribute", "person", "person"),
    ("Change the background of this photo to night city", "replace", "background", "night city"),
    ("Change the background to a tropical rainforest.", "replace", "background", "tropical rainforest"),
    ("Change the office environment in the picture to a sunny beach.", "replace", "background", "sunny beach"),
    ("Change the house in the picture from the city to a mountain village setting.",
     "replace", "background", "mountain village"),
    ("Transfer the image into a minimalist flat-vector illustration style.", "global", None, None),
    ("Change the image to cartoon style", "global", None, None),
    ("Remove the haze in the image.", "global", None, None),
    ("make the dog on the moon.", "replace", "background", "moon"),
    ("add a bow tie on the cat.", "add", None, "bow tie"),
    ("remove the text.", "remove", "text", None),
    ("Change the image to a winter scene", "global", None, None),
    ("Change the scene from a winter setting to a summer setting", "replace", "background", "summer"),
    # a sixth batch, run blind (1 type miss of 30 on first run)
    ("Change this red apple to green.", "attribute", "red apple", "red apple"),
    ("Change these leaves to yellow.", "attribute", "leaves", "leaves"),
    ("Change this umbrella to pink.", "attribute", "umbrella", "umbrella"),
    ("Change the cat's fur to white.", "attribute", "cat", "cat"),
    ("Change this boat's hull to blue.", "attribute", "boat", "boat"),
    ("Change the building's facade to brick red.", "attribute", "building", "building"),
    ("Remove two eggs.", "remove", "eggs", None),
    ("Remove three cups.", "remove", "cups", None),
    ("Add one banana.", "add", None, "banana"),
    ("Add two more candles.", "add", None, "candles"),
    ("remove the glasses on the man's face.", "remove", "glasses", None),
    ("make the tiger in the snow.", "replace", "background", "snow"),
    ("make the car in the desert.", "replace", "background", "desert"),
    ("replace the flowers to sunflowers.", "replace", "flowers", "sunflowers"),
    ("add a party hat on the dog.", "add", None, "party hat"),
    ("add a scarf to the snowman.", "add", None, "scarf"),
    ("Change the trees in the picture from green summer foliage to a snowy winter scene.",
     "replace", "background", "snowy winter"),
    ("Replace the wooden door with a glass door.", "replace", "wooden door", "glass door"),
    ("Replace the dog's collar with a red bandana.", "replace", "collar", "red bandana"),
    ("Change the color of the sofa to dark green", "attribute", "sofa", "sofa"),
    ("Change the colour of the walls to light grey.", "attribute", "walls", "walls"),
    ("Add a bird to the left of the bench", "add", None, "bird"),
    ("Add a car to the right of the bus", "add", None, "car"),
    ("Remove the clouds from the sky.", "remove", "clouds", None),
    ("Remove the shadow of the tree.", "remove", "shadow", None),
    ("Make the man turn around.", "attribute", "person", "person"),
    ("Make the woman hold a cup of coffee.", "add", None, "cup"),
    ("Change the image to Chinese ink painting style", "global", None, None),
    ("Remove the noise from the photo.", "global", None, None),
    ("Replace the background with a sunset over the ocean.", "replace", "background", "sunset"),
    # a seventh batch, run blind (1 concept miss of 30 on first run)
    ("Change the color of the wooden fence to a bright white.", "attribute", "wooden fence", "wooden fence"),
    ("Change the material of the chair from wood to metal.", "attribute", "chair", "chair"),
    ("Change the surface of the table to a polished marble texture.", "attribute", "table", "table"),
    ("Change the teapot's color to a deep emerald green.", "attribute", "teapot", "teapot"),
    ("Change the pattern of the dress to polka dots.", "attribute", "dress", "dress"),
    ("Make the person raise their left hand to wave.", "attribute", "person", "person"),
    ("Make the person sit down on the bench.", "attribute", "person", "person"),
    ("Make the person cross their arms.", "attribute", "person", "person"),
    ("Change the person's facial expression to a frown.", "attribute", "person", "person"),
    ("Make the person lean forward slightly.", "attribute", "person", "person"),
    ("Remove the bicycle parked near the tree, leaving the grass untouched.", "remove", "bicycle", None),
    ("Remove the vase of flowers on the table.", "remove", "vase", None),
    ("Remove all the cars from the street.", "remove", "cars", None),
    ("Remove the man wearing a red jacket.", "remove", "man", None),
    ("Replace the red apple on the plate with a yellow banana.", "replace", "red apple", "yellow banana"),
    ("Replace the cat lying on the rug with a golden retriever.", "replace", "cat", "golden retriever"),
    ("replace the zebra with a horse.", "replace", "zebra", "horse"),
    ("replace pizza with cake", "replace", "pizza", "cake"),
    ("Add a pair of red sneakers next to the door.", "add", None, "red sneakers"),
    ("Add a steaming cup of coffee on the desk beside the laptop.", "add", None, "cup"),
    ("Add a seagull flying above the waves.", "add", None, "seagull"),
    ("Add a dog to the left of the person", "add", None, "dog"),
    ("Change the background of this photo to space", "replace", "background", "space"),
    ("Change the street scene in the picture from daytime to a neon-lit night city environment.",
     "replace", "background", "neon-lit night city"),
    ("Change the dining room setting to an outdoor picnic area.", "replace", "background", "outdoor picnic area"),
    ("Transfer the image into a retro 8-bit pixel-art style.", "global", None, None),
    ("Change the image to Pop Art style", "global", None, None),
    ("Remove the blurriness in the picture.", "global", None, None),
    ("Change this hat to blue.", "attribute", "hat", "hat"),
    ("Remove one orange.", "remove", "orange", None),
]


def test_dev_set_meets_the_thresholds():
    if not DEV.is_file():
        pytest.skip(f"no dev.jsonl at {DEV} (set SIGMA_SHARED)")
    records = [json.loads(line) for line in DEV.read_text().splitlines() if line.strip()]
    assert len(records) >= 100
    result = score_parser(records, parse_rules)
    assert result["n"] == len(records)
    assert result["type_accuracy"] >= 0.97, result["errors"]
    assert result["concept_match"] >= 0.85, result["errors"]


@pytest.mark.parametrize("text,edit_type,source,target", HELD_OUT, ids=[c[0][:40] for c in HELD_OUT])
def test_held_out_phrasings(text, edit_type, source, target):
    p = parse_rules(text)
    assert p.edit_type == edit_type, p
    assert concept_match(p.source, source), p
    assert concept_match(p.target, target), p


def test_held_out_set_is_large_and_varied():
    assert len(HELD_OUT) >= 30
    assert {c[1] for c in HELD_OUT} == {"add", "remove", "replace", "attribute", "global"}


@pytest.mark.parametrize("text", [None, "", "   ", "?!", "\n\t"])
def test_no_instruction_gives_no_edit_type(text):
    p = parse_instruction(text)
    assert p.edit_type is None and p.source is None and p.target is None and p.is_empty


def test_parse_shape_follows_the_edit_type():
    assert parse_rules("add a dog").concepts() == {"original": None, "edited": "dog"}
    assert parse_rules("remove the dog").concepts() == {"original": "dog", "edited": None}
    assert parse_rules("replace the dog with a cat").concepts() == {"original": "dog", "edited": "cat"}
    assert parse_rules("paint the door blue").concepts() == {"original": "door", "edited": "door"}
    assert parse_rules("make it snowy").concepts() == {"original": None, "edited": None}


def test_odd_text_never_raises_and_is_deterministic():
    texts = ["add", "remove the", "replace with", "with with with", "a" * 900, "🙂 add a 🐱", "and and",
             "change to", "make", "(((", "the the the cat", "Remove , , the dog"]
    for text in texts:
        first = parse_rules(text)
        assert first == parse_rules(text)
        assert first.edit_type in (None, "add", "remove", "replace", "attribute", "global")



# One case per kind of token the phrase reader treats on its own: (text, options, concept, end, saw an
# attribute noun, proper). `end` is where the next reader starts, so it is pinned as much as the words.
PHRASES = [
    ("the streetcar (tram) in the foreground", {}, "streetcar", 5, False, False),   # parenthetical skipped
    ("the sign 'SALE' on the wall", {}, 'sign "SALE"', 3, False, False),            # quoted text kept
    ("the text SOLD OUT above the door", {}, 'text "SOLD OUT"', 4, False, False),   # caps after a text noun
    ("CLOSED on the door", {"caps_literal": True}, '"CLOSED"', 1, False, False),
    ("CLOSED on the door", {}, "closed", 1, False, False),
    ("futuristic, metallic structures", {}, "futuristic metallic structures", 4, False, False),
    ("a cat, a dog and a rabbit on the sofa", {}, "cat, dog and rabbit", 8, False, False),
    ("cups, plates, and napkins", {}, "cups, plates and napkins", 6, False, False),
    ("the cat, which sleeps", {}, "cat", 2, False, False),                          # a comma ends it
    ("the sign that says EXIT", {}, "sign", 2, False, False),                       # relative clause
    ("a sign reading OPEN", {}, "sign", 2, False, False),
    ("three small birds", {}, "birds", 3, False, False),                            # counts, size words
    ("the dog a cat", {}, "dog", 2, False, False),                                  # a 2nd article
    ("the dog a cat", {"stop_at_determiner": False}, "dog cat", 4, False, False),
    ("the colour of the sky", {}, "sky", 5, True, False),                           # attribute "of"
    ("a pair of shoes", {}, "shoes", 4, False, False),                              # quantifier "of"
    ("the roof of the house", {}, "roof", 2, False, False),                         # location "of"
    ("red and blue kites", {}, "red and blue kites", 4, False, False),              # compound value
    ("the cat and the dog", {}, "cat and dog", 5, False, False),                    # conjoined objects
    ("the dog and fill the area", {}, "dog", 2, False, False),                      # "and" + constraint
    ("the dog and remove the cat", {}, "dog", 2, False, False),                     # "and" + edit verb
    ("the man smile", {"stop_at_verbs": True}, "man", 2, False, False),
    ("the man wear a hat", {"stop_at_verbs": True}, "man", 2, False, False),
    ("the man is tall", {"stop_at_verbs": True}, "man", 2, False, False),
    ("the boy sitting on the bench", {}, "boy", 2, False, False),                   # participle clause
    ("the boy wearing a hat", {}, "boy", 2, False, False),
    ("the woman's hat", {}, "hat", 3, False, False),                                # owner dropped
    ("the animal's fur colour", {}, "animal", 4, True, False),                      # owner's attribute
    ("the person's facial expression", {}, "person", 4, True, False),
    ("the dogs' bowl", {}, "bowl", 3, False, False),
    ("the Rubik's cube", {}, "rubik's cube", 3, False, True),                       # a name
    ("Rubik's cube", {}, "cube", 2, False, False),                                  # ... not at the start
    ("the car colour", {}, "car", 3, True, False),                                  # trailing attribute
    ("the mountain scene", {}, "mountain", 3, False, False),                        # generic scene tail
]


@pytest.mark.parametrize("text,options,concept,end,saw_attribute,proper", PHRASES, ids=[
    f"{c[0][:30]}-{sorted(c[1])}" for c in PHRASES])
def test_phrase_reader_token_kinds(text, options, concept, end, saw_attribute, proper):
    ph = extract_phrase(tokenize(text), 0, **options)
    assert (ph.text, ph.end, ph.saw_attribute, ph.proper) == (concept, end, saw_attribute, proper)


# Each sentence pattern without a leading verb, named by the rule that must read it.
DECLARATIVES = [
    ("the cat should be replaced by a dog", "replace", "cat", "dog", "passive-replace"),
    ("the sign is gone", "remove", "sign", None, "passive-remove"),
    ("the blur should be removed", "global", None, None, "passive-remove-degradation"),
    ("a moon appears", "add", None, "moon", "passive-add"),
    ("the dog instead of the cat", "replace", "cat", "dog", "instead-of"),
    ("the car -> a bus", "replace", "car", "bus", "arrow-thing"),
    ("the car to red", "attribute", "car", "car", "declarative-to-value"),
    ("imagine if the sky were green", "attribute", "sky", "sky", "declarative-be-value"),
    ("there should be heavy snow", "global", None, None, "there-be-weather"),
    ("there is a boat on the lake", "add", None, "boat", "there-be"),
    ("a dog with a bone", "add", None, "bone", "with-object"),
    ("the woman was holding a cup", "add", None, "cup", "declarative-wear"),
    ("the river turned into lava", "replace", "river", "lava", "declarative-be-thing"),
    ("in this photo, add a cat", "add", None, "cat", "add"),                       # a verb later on
    ("a scene without people", "remove", "people", None, "without"),
]


@pytest.mark.parametrize("text,edit_type,source,target,rule", DECLARATIVES, ids=[c[0][:40] for c in DECLARATIVES])
def test_declarative_patterns(text, edit_type, source, target, rule):
    p = parse_rules(text)
    assert (p.edit_type, p.source, p.target, p.rule) == (edit_type, source, target, rule)

def test_concept_match_rules():
    assert concept_match("skateboard", "giant skateboard")
    assert concept_match("cube", "rubik's cube")
    assert concept_match("forest", "forest environment")
    assert concept_match("cherry", "cherries") and concept_match("people", "person")
    assert concept_match(None, None)
    assert not concept_match("red", "red bell pepper")
    assert not concept_match("person riding skateboard", "person")
    assert not concept_match("dog", None) and not concept_match(None, "dog")
    assert normalize_concept("The two Pop-up Teddy Bears") == ("pop", "up", "teddy", "bear")


def test_registry_did_you_mean():
    with pytest.raises(UnknownNameError, match="Did you mean 'rules'"):
        get_parser("rulez")


def test_json_repair_reads_near_json():
    assert repair_json('{edit_type: "replace", \'source\': "dog", target: None,}') == \
        {"edit_type": "replace", "source": "dog", "target": None}
    assert repair_json('Sure! {"edit_type": "add", "source": null, "target": "cat"} hope it helps') == \
        {"edit_type": "add", "source": None, "target": "cat"}
    assert repair_json('{"edit_type": "remove", "source": "boat"') == {"edit_type": "remove", "source": "boat"}
    assert repair_json("{edit_type: global, source: none, target: none}") == \
        {"edit_type": "global", "source": None, "target": None}
    assert repair_json("no object here") is None


def test_llm_answers_are_validated_and_fall_back_to_rules():
    good = parse_answer('{"edit_type": "Replace", "source": "the dog", "target": "a white cat"}',
                        "swap the dog for a cat")
    assert (good.edit_type, good.source, good.target, good.fallback) == ("replace", "dog", "white cat", False)
    attr = parse_answer('{"edit_type": "attribute", "source": "car", "target": "red"}', "turn the car red")
    assert attr.source == attr.target == "car"            # attribute: the same object on both sides
    for bad in ('{"edit_type": "make", "source": "snowy"}', "I cannot help", '{"edit_type": "add"}',
                '{"edit_type": "replace", "source": 3}'):
        p = parse_answer(bad, "replace the dog with a cat")
        assert p.fallback and p.backend == "llm"
        assert (p.edit_type, p.source, p.target) == ("replace", "dog", "cat")


def test_cli_parse_one(capsys):
    assert main(["parse", "replace the dog with a cat"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["edit_type"] == "replace" and out["source"] == "dog" and out["target"] == "cat"
    assert out["backend"] == "rules" and out["fallback"] is False


def test_cli_parse_file_scores_expected_fields(tmp_path, capsys):
    f = tmp_path / "x.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"instruction": "add a cat", "edit_type": "add", "source": None, "target": "cat"},
        {"instruction": "remove the dog", "edit_type": "remove", "source": "dog", "target": None},
        {"instruction": "make it snowy", "edit_type": "replace", "source": "x", "target": "y"},
    ]) + "\n")
    out_file = tmp_path / "parses.jsonl"
    assert main(["parse", "--file", str(f), "--show-errors", "--out", str(out_file)]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["n"] == 3
    assert summary["type_accuracy"] == pytest.approx(2 / 3, abs=1e-3)
    assert summary["concept_match"] == pytest.approx(2 / 3, abs=1e-3)
    assert "make it snowy" in captured.out                      # --show-errors lists the miss
    assert "edit-type accuracy 66.7 %" in captured.err
    assert len(out_file.read_text().splitlines()) == 3


def test_cli_parse_file_plain_lines_prints_parses(tmp_path, capsys):
    f = tmp_path / "plain.txt"
    f.write_text("add a cat\n\nremove the dog\n")
    assert main(["parse", "--file", str(f)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["edit_type"] for x in lines] == ["add", "remove"]


@pytest.mark.parametrize("argv,message", [
    (["parse"], "nothing to parse"),
    (["parse", "x", "--file", "y"], "not both"),
    (["parse", "--file", "/no/such/file.jsonl"], "no such file"),
    (["parse", "x", "--backend", "rulez"], "Did you mean"),
    (["parse", "x" * 1001], "at most 1000"),
    (["parse", "x", "--model", "m"], "--model applies"),
    (["parse", "x", "--original", "a.png"], "go together"),
])
def test_cli_parse_bad_input_is_a_clear_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sigma: error [") and message in err and "Traceback" not in err


def test_cli_parse_file_that_is_no_regular_file_says_what_it_is(tmp_path, capsys):
    """A FIFO (opened without waiting for a writer), a device or a folder as --file was "no such file", as if nothing
    were there; a link to nothing now says so too."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "gone.jsonl").symlink_to(tmp_path / "moved.jsonl")
    for given, what in ((tmp_path / "fifo", "a FIFO"), (Path("/dev/null"), "a character device"),
                        (tmp_path, "a folder")):
        assert main(["parse", "--file", str(given)]) == 2
        assert capsys.readouterr().err == (f"sigma: error [not_a_regular_file]: --file {given}: not a regular file "
                                           f"({what}); give a JSONL or text file\n")
    assert main(["parse", "--file", str(tmp_path / "gone.jsonl")]) == 2
    assert capsys.readouterr().err == (f"sigma: error [file_not_found]: --file {tmp_path / 'gone.jsonl'}: a broken "
                                       f"link to {tmp_path / 'moved.jsonl'} (nothing is there)\n")


def test_cli_parse_out_is_checked_before_the_parse(tmp_path, capsys):
    """`--out` naming the --file it reads replaced a labelled dev set by the parses (its expected fields lost,
    exit 0); a folder was an os_error only after every line was parsed (minutes with a model backend); with one
    INSTRUCTION it was ignored without a word. Each is now refused before the parser loads."""
    f = tmp_path / "dev.jsonl"
    dev = json.dumps({"instruction": "remove the dog", "edit_type": "remove", "source": "dog", "target": None}) + "\n"
    f.write_text(dev)
    (tmp_path / "folder").mkdir()
    (tmp_path / "link.jsonl").symlink_to(f)
    for out, code in ((f, "bad_arguments"), (tmp_path / "link.jsonl", "bad_arguments"),
                      (tmp_path / "folder", "out_is_a_folder"), ("", "empty_path")):   # "": was ignored; now CLI-wide
        assert main(["parse", "--file", str(f), "--out", str(out)]) == 2
        assert f"sigma: error [{code}]" in capsys.readouterr().err
    assert f.read_text() == dev
    assert main(["parse", "remove the dog", "--out", str(tmp_path / "one.jsonl")]) == 2
    assert "--out goes with --file" in capsys.readouterr().err and not (tmp_path / "one.jsonl").exists()
    assert main(["parse", "--file", str(f), "--out", str(tmp_path / "sub" / "p.jsonl")]) == 0
    assert json.loads((tmp_path / "sub" / "p.jsonl").read_text())["source"] == "dog"


def test_cli_parse_out_to_a_pipe(tmp_path, capsys):
    """`--out /dev/stdout`, a FIFO or `>(gzip > x.gz)` took the parses before --out became an atomic write
    (271c1c7); the rename then replaced the pipe (as root: the /dev/stdout link itself) and the reader got nothing.
    A stream is written to, never renamed over."""
    f = tmp_path / "dev.jsonl"
    f.write_text(json.dumps({"instruction": "remove the dog"}) + "\n")
    fifo = tmp_path / "parses.pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)     # a reader is there, so the writer's open never waits
    try:
        assert main(["parse", "--file", str(f), "--out", str(fifo)]) == 0
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
        received = os.read(reader, 65536)
    finally:
        os.close(reader)
    assert json.loads(received)["source"] == "dog"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


_KILLED_PARSE = at_first_temp_rename() + """from sigma.cli import main
main(sys.argv[1:])
"""


def test_cli_parse_out_sweeps_the_temporary_file_a_killed_parse_left_beside_it(tmp_path, capsys):
    """`sigma parse --file X --out FILE` killed between writing its temporary file and renaming it (a real process,
    SIGKILLed at that rename) left `.FILE.PID.RANDOM.tmp` beside FILE for good: no one swept that folder. The next
    parse to FILE removes it — only that name, only a dead writer's: a live writer's file of that name, a dead
    writer's file of another name, a legacy `FILE.tmp`, a user's `notes.tmp` and a link of the form stay."""
    f = tmp_path / "dev.jsonl"
    f.write_text(json.dumps({"instruction": "remove the dog"}) + "\n")
    folder = tmp_path / "parses"
    folder.mkdir()
    out = folder / "p.jsonl"
    killed = subprocess.run([sys.executable, "-c", _KILLED_PARSE, "parse", "--file", str(f), "--out", str(out)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr
    dead = killed.stdout.strip().splitlines()[0]
    assert dead.startswith(".p.jsonl.") and dead.endswith(".tmp") and (folder / dead).is_file(), dead
    assert not out.exists()
    dead_pid = dead.split(".")[-3]
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not ours")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        kept = [f".p.jsonl.{live.pid}.0badf00d.tmp", f".other.jsonl.{dead_pid}.abcdef01.tmp", "p.jsonl.tmp",
                "notes.tmp"]
        for name in kept:
            (folder / name).write_text("x")
        link = folder / f".p.jsonl.{dead_pid}.abcdef02.tmp"
        link.symlink_to(outside)
        kept.append(link.name)
        assert main(["parse", "--file", str(f), "--out", str(out)]) == 0
        capsys.readouterr()
        assert not (folder / dead).exists()
        assert json.loads(out.read_text())["source"] == "dog"
        assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp")) == sorted(kept)
        assert link.is_symlink() and outside.read_text() == "not ours"
    finally:
        live.kill()
        live.wait(timeout=30)


def test_cli_parse_bad_json_line(tmp_path, capsys):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"instruction": "add a cat"}\n{"instruction": \n')
    assert main(["parse", "--file", str(f)]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err


@pytest.mark.parametrize("text, edits", [
    ("remove the cat\nadd a dog", [("remove", "cat", None), ("add", None, "dog")]),
    ("Remove the people\r\nAdd a fountain\r\nMake the grass greener",
     [("remove", "people", None), ("add", None, "fountain"), ("attribute", "grass", "grass")]),
    ("remove the cat\n\n\nadd a dog\n", [("remove", "cat", None), ("add", None, "dog")]),
    ("replace the dog\nwith a cat", [("replace", "dog", "cat")]),   # a wrapped line is one sentence
    ("remove the flower\nplant pot", [("remove", "flower plant pot", None)]),
])
def test_a_line_that_starts_with_an_editing_verb_is_a_new_edit(text, edits):
    """Line breaks were read as spaces: one edit per line (no full stops, as people type a list) gave one edit
    whose concept ran into the next line's verb ('remove the cat' / 'add a dog' -> remove 'cat add')."""
    assert [(e.edit_type, e.source, e.target) for e in parse_rules(text).edits] == edits


@pytest.mark.parametrize("text, edit_type, source, target", [
    ("replace the jalapeño with a tomato", "replace", "jalapeño", "tomato"),
    ("remove the café sign", "remove", "café sign", None),
    ("add a piñata", "add", None, "piñata"),
    ("make the fac\u0327ade blue", "attribute", "façade", "façade"),        # decomposed: NFC
    ("remove the ca\u200dt", "remove", "cat", None),                       # zero-width joiner
    ("remove\x00 the cat", "remove", "cat", None),                         # a control character
    ("re\x00move the dog", "remove", "dog", None),                         # ... inside a known word: dropped
    ("remove the d\x1bo\x7fg", "remove", "dog", None),                     # ESC, DEL
    ("replace the c\x00a\u200bt with a d\x9fog", "replace", "cat", "dog"),  # NUL, zero-width space, C1 control
    ("remove\tthe\ncat", "remove", "cat", None),                           # a tab or line break is a space
    ("add\u0085a hat", "add", None, "hat"),                                 # NEL, a line break too
    ("remove the \u00adcat", "remove", "cat", None),                       # soft hyphen
    ("remove the 猫", "remove", "猫", None),
])
def test_letters_outside_ascii_stay_in_their_word(text, edit_type, source, target):
    """The tokenizer took only A-Z as letters: every accented letter was a token of its own, so the detector
    was asked for 'jalape ñ o' or 'caf é sign'; a zero-width joiner or a NUL split a word or lost the object
    (a NUL was read as a space: "re<NUL>move the dog" had no verb, and no edit)."""
    p = parse_rules(text)
    assert (p.edit_type, p.source, p.target) == (edit_type, source, target)


@pytest.mark.parametrize("text, spaced", [
    ("remove the\x00dog", "remove the dog"),
    ("replace the\x1bcat with a red\x7fdog", "replace the cat with a red dog"),     # ESC, DEL
    ("change the\x9fcar\x01to blue", "change the car to blue"),                    # C1, SOH
    ("add a\x00hat\x00to the\x00man", "add a hat to the man"),                    # beside a one-letter word
    ("remove\x00\x00\x00the\x07\x08dog", "remove the dog"),                          # a run of them: one break
    ("r\x00e\x00m\x00o\x00v\x00e\x00 \x00t\x00h\x00e\x00 \x00c\x00a\x00t\x00", "remove the cat"),  # UTF-16 as bytes
])
def test_a_control_character_between_words_is_a_word_break(text, spaced):
    """A NUL or other control character (not a tab or line break) was dropped wherever it stood: "remove the<NUL>dog"
    asked the detector for "thedog", "a red<DEL>dog" became "reddog". Between two words it is now a break, read as the
    same instruction with a space; inside a word (a lone letter beside it, or pieces that make a word the lexicon
    knows, see test_letters_outside_ascii_stay_in_their_word) it is still dropped."""
    parsed, plain = parse_rules(text), parse_rules(spaced)
    assert [(e.edit_type, e.source, e.target) for e in parsed.edits] == \
        [(e.edit_type, e.source, e.target) for e in plain.edits], (parsed, plain)
    assert parsed.edits


@pytest.mark.parametrize("text, spaced", [
    ("remove the \ud800dog", "remove the dog"),                     # a JSON "\\ud800" given to the library
    ("remove the \ufffddog", "remove the dog"),                     # ... as the batch path hands it on (U+FFFD)
    ("remove the \udcff dog", "remove the dog"),                    # a non-UTF-8 byte of argv or a file name
    ("replace the d\ufffdog with a c\ud800at", "replace the dog with a cat"),   # inside a word: dropped
    ("re\ufffdmove the cat", "remove the cat"),                     # ... inside a known word too
])
def test_an_unreadable_character_is_read_as_a_control_character(text, spaced):
    """A lone surrogate or U+FFFD (text that could not be decoded) was read as punctuation, which ended the noun
    phrase before it began: "remove the \\ud800dog" was a remove of nothing. The CLI and the API refuse a surrogate
    (`invalid_text`), but a batch run goes on with U+FFFD in its place (`sigma.batch.decode.writable`) and a library
    caller may pass anything: both are now read as a control character is, a word break or dropped inside a word."""
    parsed, plain = parse_rules(text), parse_rules(spaced)
    assert [(e.edit_type, e.source, e.target) for e in parsed.edits] == \
        [(e.edit_type, e.source, e.target) for e in plain.edits], (parsed, plain)
    assert parse_rules(replace_surrogates(text)).edits == parsed.edits


def test_a_pile_of_combining_marks_is_cut_to_what_unicode_allows_in_a_row():
    """A combining mark continues the word before it, so "add a d" and 5,000 acute accents ("zalgo" text) was a
    5,001-character concept, sent to the detector and stored in every row. Unicode's Stream-Safe Text Format (UAX #15)
    allows 30 marks in a row; the rest are dropped. Real words keep theirs: Devanagari, a decomposed umlaut."""
    p = parse_rules("add a d" + "\u0301" * 5000 + " to the wall")
    assert (p.edit_type, p.target) == ("add", "d" + "\u0301" * 30)
    p = parse_rules("remove the d" + "\u0308\u0301" * 100 + "og and the cat")   # no precomposed d: NFKC keeps them
    assert p.source == "d" + "\u0308\u0301" * 15 + "og and cat"
    assert parse_rules("add a कुत्ता").target == "कुत्ता"
    assert parse_rules("add a d" + "\u0301" * 30).target == "d" + "\u0301" * 30


def test_sigma_parse_reads_a_nul_between_words_as_a_break(tmp_path, capsys):
    """`sigma parse --file` with the line "remove the<NUL>dog" said source "thedog"; now "dog"."""
    (tmp_path / "lines.txt").write_bytes(b"remove the\x00dog\nremove the dog\n")
    assert main(["parse", "--file", str(tmp_path / "lines.txt")]) == 0
    nul, plain = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert (nul["edit_type"], nul["source"], nul["target"]) == ("remove", "dog", None), nul
    assert ({k: v for k, v in nul.items() if k != "instruction"}
            == {k: v for k, v in plain.items() if k != "instruction"})


def test_cli_parse_file_with_a_bom_and_crlf(tmp_path, capsys):
    """A UTF-8 BOM (Notepad, Excel's UTF-8 export) made the first JSON line plain text: it was parsed as the
    instruction '\\ufeff{"instruction": ...}' (an add of '"instruction"') and scored against its labels."""
    f = tmp_path / "bom.jsonl"
    f.write_bytes('\ufeff{"instruction": "remove the cat"}\r\n{"instruction": "remove the cat"}\r\n'
                  '\r\nadd a dog\r\n'.encode())
    assert main(["parse", "--file", str(f)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["instruction"], r["edit_type"], r["source"], r["target"]) for r in rows] == [
        ("remove the cat", "remove", "cat", None), ("remove the cat", "remove", "cat", None),
        ("add a dog", "add", None, "dog")]
    f.write_bytes("\ufeffremove the cat\n".encode())
    assert main(["parse", "--file", str(f)]) == 0
    assert json.loads(capsys.readouterr().out)["instruction"] == "remove the cat"


@pytest.mark.parametrize("expected, said", [
    ({"edit_type": "delete", "source": "dog"}, "expected edit_type 'delete' is not an edit type (known: add, remove, "),
    ({"edit_type": "Remove", "source": "dog"}, "expected edit_type 'Remove' is not an edit type"),
    ({"edit_type": ["remove"]}, "expected edit_type ['remove'] is not an edit type"),
    ({"edit_type": {"a": 1}}, "expected edit_type {'a': 1} is not an edit type"),
    ({"edit_type": "remove", "source": 5}, "expected source must be a string or null, not int 5"),
    ({"edit_type": "remove", "edits": [5]}, "expected edits[0] is int 5, not an object"),
    ({"edit_type": "remove", "edits": "remove"}, "expected edits must be a list, not str"),
    ({"edit_type": "remove", "edits": [{"edit_type": "remove"}, {"edit_type": "zap"}]},
     "expected edits[1] edit_type 'zap' is not an edit type"),
])
def test_cli_parse_file_refuses_expected_fields_it_cannot_score(tmp_path, capsys, expected, said):
    """An expected edit type that is no edit type ('delete') was counted as the parser's miss without a word
    (type_accuracy_by_type {"delete": 0.0}); a list or object as the type, a number as a concept or an `edits`
    entry that is no object crashed the scoring with a traceback. Each is now the file's error, at its line."""
    f = tmp_path / "dev.jsonl"
    f.write_text(json.dumps({"instruction": "add a cat", "edit_type": "add", "target": "cat"}) + "\n"
                 + json.dumps({"instruction": "remove the dog", **expected}) + "\n")
    assert main(["parse", "--file", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sigma: error [invalid_input]: 1 line(s) with expected fields that cannot be scored")
    assert f"dev.jsonl:2: {said}" in err and "Traceback" not in err, err


def test_cli_parse_file_says_every_bad_label_at_once_and_null_means_no_edit(tmp_path, capsys):
    f = tmp_path / "dev.jsonl"
    f.write_text("".join(json.dumps({"instruction": "remove the dog", "edit_type": "delete"}) + "\n"
                         for _ in range(7)) + json.dumps({"instruction": None, "edit_type": None}) + "\n")
    assert main(["parse", "--file", str(f)]) == 2
    err = capsys.readouterr().err
    assert "7 line(s)" in err and "dev.jsonl:5:" in err and "dev.jsonl:6:" not in err and "(and 2 more)" in err
    f.write_text(json.dumps({"instruction": None, "edit_type": None}) + "\n")
    assert main(["parse", "--file", str(f)]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["type_accuracy"] == 1.0


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("tail", "expected"), [
    (" " * 50_000 + "!", None),
    (" " * 50_000 + "\n ,", {"edit_type": "remove"}),
    ("a -" * 20_000, {"edit_type": "removea -" + "a -" * 19_999}),
])
def test_json_repair_is_linear_in_a_long_run_of_spaces(tail, expected):
    """A bare value followed by 50,000 spaces and no comma took 15 s in the bare-value repair (a lazy run before
    `\\s*[,}]`); a model looping on spaces (an llm backend with a large max_new_tokens) writes that. The other shapes
    check the possessive run repairs what the lazy one did."""
    import time

    start = time.process_time()
    value = repair_json('{"edit_type": remove' + tail)
    assert time.process_time() - start < 1.0
    assert value == expected
    assert repair_json("{edit_type: red  dog - ,  source: none\n}") == {"edit_type": "red  dog -", "source": None}


def test_cli_parse_length_limit_is_a_flag(tmp_path, capsys):
    """`sigma parse` refused any instruction over a fixed 1000 characters: one an operator's
    io.limits.max_instruction_chars=5000 lets through the service could not be parsed here to see what it gives.
    --max-chars N (1 .. MAX_INSTRUCTION_CHARS, default io.limits.max_instruction_chars' default) says the limit."""
    from sigma.config.schema import MAX_INSTRUCTION_CHARS

    text = "remove the dog" + " " * 2000 + "."
    assert main(["parse", text]) == 2
    assert "at most 1000" in capsys.readouterr().err
    assert main(["parse", text, "--max-chars", "5000"]) == 0
    assert json.loads(capsys.readouterr().out)["edit_type"] == "remove"
    f = tmp_path / "long.jsonl"
    f.write_text(json.dumps({"instruction": text}) + "\n")
    assert main(["parse", "--file", str(f), "--max-chars", "3000"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "dog"
    assert main(["parse", "--file", str(f), "--max-chars", "100"]) == 2
    assert f"{f}:1 is 2015 characters; at most 100" in capsys.readouterr().err
    for bad in ("0", str(MAX_INSTRUCTION_CHARS + 1), "x"):
        assert main(["parse", "x", "--max-chars", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sigma: error [bad_arguments]") and "--max-chars" in err and "Traceback" not in err


def _full_width(text: str) -> str:
    """The text as an East-Asian IME types it in full-width mode: ASCII U+0021-007E as U+FF01-FF5E, a space as the
    ideographic space U+3000."""
    return "".join("\u3000" if c == " " else chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@pytest.mark.parametrize("text", [c[0] for c in HELD_OUT] + [
    "remove the dog", "replace the dog with a cat", "make the car red", 'write "SALE" on the sign',
    "remove the cat, then add a dog. Make it snowy.", "remove the cat; add a dog"],
    ids=lambda t: t[:40])
def test_full_width_text_parses_as_the_letters_it_stands_for(text):
    """Text was normalised with NFC, which keeps full-width forms: "ｒｅｍｏｖｅ the dog" had no verb and was an add of
    "ｒｅｍｏｖｅ". Compatibility forms are folded (NFKC) now: full-width text gives the ASCII text's edits and concepts
    (a detector is asked for "dog", not "ｄｏｇ"), and the instruction is reported as typed."""
    wide = _full_width(text)
    assert wide != text
    parsed, plain = parse_rules(wide), parse_rules(text)
    assert [(e.edit_type, e.source, e.target) for e in parsed.edits] == \
        [(e.edit_type, e.source, e.target) for e in plain.edits], (parsed, plain)
    assert parsed.instruction == wide


@pytest.mark.parametrize("text, edit_type, source, target", [
    ("ｒｅｍｏｖｅ the dog", "remove", "dog", None),                     # was an add of "ｒｅｍｏｖｅ"
    ("replace the ｄｏｇ with a ｃａｔ", "replace", "dog", "cat"),
    ("add a ｶﾒﾗ", "add", None, "カメラ"),                                # half-width katakana: the usual letters
    ("remove the ﬁsh", "remove", "fish", None),                         # a ligature
    ("remove the 猫", "remove", "猫", None),                             # CJK stays itself
])
def test_compatibility_forms_fold_in_concepts(text, edit_type, source, target):
    p = parse_rules(text)
    assert (p.edit_type, p.source, p.target) == (edit_type, source, target)
    assert concept_match("ｄｏｇ", "dog") and normalize_concept("ｔｈｅ ｄｏｇｓ") == ("dog",)


def test_cli_parse_full_width(capsys):
    assert main(["parse", "ｒｅｍｏｖｅ the dog"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["instruction"], out["edit_type"], out["source"]) == ("ｒｅｍｏｖｅ the dog", "remove", "dog")


@pytest.mark.parametrize("argv", [["parse", ""], ["parse", "   "], ["parse", "\u3000\t\n"], ["parse", "\u200b"],
                                  ["parse", " ", "--backend", "llm"]])
def test_cli_parse_refuses_an_empty_instruction_as_the_service_does(argv, capsys):
    """`sigma parse "   "` printed a parse with edit_type null and exited 0, where the service answers 422
    empty_instruction for the same text (io.pairs.check_instruction). Same code now, exit 2, before any model loads."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("sigma: error [empty_instruction]: instruction is empty") and not captured.out
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("text", ["\U0001F436\U0001F431", "!!!", "\u2192", "\U0001F436 \u200d \U0001F431"])
def test_cli_parse_refuses_text_without_words_as_it_refuses_blank_text(text, tmp_path, capsys):
    """`sigma parse "🐶🐱"` printed edit_type null and exited 0: every backend reads text without a letter or digit
    as no edit, the parse the blank refusal exists to prevent. Now empty_instruction, exit 2, as the service answers
    it (io.pairs.check_instruction); in a --file the line is named with the blank ones."""
    assert parse_rules(text).edit_type is None
    assert main(["parse", text]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("sigma: error [empty_instruction]: instruction has no words") and not captured.out
    f = tmp_path / "x.jsonl"
    f.write_text("remove the dog\n" + json.dumps({"instruction": text}) + "\n" + text + "\n")
    assert main(["parse", "--file", str(f)]) == 2
    assert f"2 line(s) with an empty instruction (nothing but spaces, or no letter or digit): {f}:2, {f}:3" \
        in capsys.readouterr().err


def test_cli_parse_file_skips_blank_lines_and_names_every_empty_instruction(tmp_path, capsys):
    """A blank line of a file is layout, skipped; a JSON line whose instruction is "" or spaces was parsed as no edit
    (scored, written to --out as edit_type null). Every such line is named now, empty_instruction, exit 2, before
    anything is parsed or written; null stays the way to say a pair has no instruction."""
    f, out = tmp_path / "x.jsonl", tmp_path / "parses.jsonl"
    lines = ['{"instruction": "add a cat"}', "", "   \t", '{"instruction": null}', "remove the dog"]
    f.write_text("\n".join(lines) + "\n")
    assert main(["parse", "--file", str(f)]) == 0
    assert [json.loads(x)["edit_type"] for x in capsys.readouterr().out.splitlines()] == ["add", None, "remove"]
    bad = lines + [json.dumps({"instruction": s, "edit_type": None}) for s in ["", "  ", "\u3000", "", "", "", " "]]
    f.write_text("\n".join(bad) + "\n")
    assert main(["parse", "--file", str(f), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("sigma: error [empty_instruction]: 7 line(s) with an empty instruction")
    assert f"{f}:6, {f}:7" in captured.err and f"{f}:10 (and 2 more)" in captured.err and f"{f}:11" not in captured.err
    assert '{"instruction": null}' in captured.err
    assert not captured.out and not out.exists()


# The quotes a Chinese or Japanese keyboard types: corner brackets (their half-width and vertical forms fold to them
# under NFKC), white corner brackets, double prime quotes, and the full-width '＂' (NFKC's '"').
CJK_QUOTES = [("「", "」"), ("『", "』"), ("｢", "｣"), ("﹁", "﹂"), ("﹃", "﹄"), ("〝", "〟"), ("〝", "〞"),
              ("＂", "＂")]


@pytest.mark.parametrize("template", [
    "add {OPEN} sign", "write {OPEN} on the door", "replace the text {OPEN} with {CLOSED}",
    "change the sign's text from {OPEN} to {CLOSED}", "add{OPEN}sign", "remove the word {OPEN}"])
@pytest.mark.parametrize("left, right", CJK_QUOTES, ids=lambda q: f"U+{ord(q):04X}")
def test_cjk_quotes_are_quotes(template, left, right):
    """`add 「OPEN」 sign` was an add with no target (the brackets were punctuation, OPEN a stray word) where
    `add "OPEN" sign` adds `"OPEN" sign`: the quotes an IME types are quotes, and give the ASCII text's edits."""
    typed = template.format(OPEN=f"{left}OPEN{right}", CLOSED=f"{left}SOLD OUT{right}")
    plain = template.format(OPEN='"OPEN"', CLOSED='"SOLD OUT"')
    parsed, expected = parse_rules(typed), parse_rules(plain)
    assert [(e.edit_type, e.source, e.target) for e in parsed.edits] == \
        [(e.edit_type, e.source, e.target) for e in expected.edits], (parsed, expected)
    assert any('"OPEN"' in (e.source or "") + (e.target or "") for e in parsed.edits), parsed
    assert parsed.instruction == typed


# The quotes European keyboards and typesetting use: guillemets « » (French, with a no-break or narrow no-break space
# inside), » « (German, Danish), single guillemets ‹ › and › ‹, the low-9 quotes „ “ / „ ” (German, Polish, Czech)
# and ‚ ‘, and the reversed ‟ ‛. European text spaces its quotes, so the templates without "add{OPEN}sign".
EUROPEAN_QUOTES = [("«", "»"), ("»", "«"), ("«\u00a0", "\u00a0»"), ("«\u202f", "\u202f»"), ("‹", "›"), ("›", "‹"),
                   ("„", "“"), ("„", "”"), ("‟", "”"), ("‚", "‘"), ("‛", "’")]


@pytest.mark.parametrize("template", [
    "add {OPEN} sign", "write {OPEN} on the door", "replace the text {OPEN} with {CLOSED}",
    "change the sign's text from {OPEN} to {CLOSED}", "remove the word {OPEN}"])
@pytest.mark.parametrize("left, right", EUROPEAN_QUOTES, ids=lambda q: "+".join(f"U{ord(c):04X}" for c in q))
def test_european_quotes_are_quotes(template, left, right):
    """`add «OPEN» sign` was an add with no target and `replace the text „OPEN“ with ‹SOLD OUT›` a replace of
    "text" with nothing: guillemets and low-9 quotes were punctuation, while ASCII, curly and CJK quotes are quotes.
    They give the ASCII text's edits now, as the CJK ones do (`test_cjk_quotes_are_quotes`)."""
    test_cjk_quotes_are_quotes(template, left, right)


def test_cli_parse_corner_brackets(capsys):
    assert main(["parse", "add 「OPEN」 sign"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["edit_type"], out["target"], out["instruction"]) == ("add", '"OPEN" sign', "add 「OPEN」 sign")


@pytest.mark.parametrize("text", ["", "\n", "\n   \n\t\n", "\u3000\n\u200b\n"],
                         ids=["empty", "newline", "blank", "wide"])
def test_cli_parse_a_file_of_no_instructions_says_so(tmp_path, capsys, text):
    """A --file of blank lines alone (or none) printed nothing and exited 0, and `--out` replaced its file with an
    empty one: no parse and no word. It is refused as `sigma eval` refuses a set with no pair (no_pairs): the code
    no_instructions, exit 2, before the parser loads; nothing is written."""
    f, out = tmp_path / "x.jsonl", tmp_path / "parses.jsonl"
    f.write_text(text, encoding="utf-8")
    out.write_text('{"kept": true}\n')
    assert main(["parse", "--file", str(f), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"sigma: error [no_instructions]: --file {f}") and not captured.out, captured
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    assert out.read_text() == '{"kept": true}\n'
    assert main(["parse", "--file", str(f)]) == 2
    assert "[no_instructions]" in capsys.readouterr().err


LINE_BREAKERS = "\x7f\x85\x9b\u2028\u2029"


def test_cli_parse_json_lines_escape_del_c1_and_line_separators(tmp_path, capsys):
    """DEL, C1 controls and U+2028/U+2029 in an instruction were written raw into `sigma parse`'s JSON (ensure_ascii
    off), which is valid JSON but splits the line for `str.splitlines` and JavaScript readers of the JSONL, and makes
    a terminal act on the C1. They are now `\\uXXXX` in every line the command writes (stdout, --out,
    --show-errors, the summary); other text ("कुत्ता") stays readable."""
    text = f"remove the dog{LINE_BREAKERS} and add a कुत्ता"
    assert main(["parse", text]) == 0
    out = capsys.readouterr().out
    assert not set(LINE_BREAKERS) & set(out) and "कुत्ता" in out and len(out.splitlines()) == 1
    assert json.loads(out)["instruction"] == text
    f, dest = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    f.write_text(json.dumps({"instruction": text, "edit_type": "add", "source": None, "target": text}) + "\n"
                 + json.dumps({"instruction": text}) + "\n", encoding="utf-8")
    assert main(["parse", "--file", str(f), "--out", str(dest), "--show-errors"]) == 0
    for written in (capsys.readouterr().out, dest.read_text(encoding="utf-8")):
        assert not set(LINE_BREAKERS) & set(written)
        lines = written.splitlines()
        assert all(json.loads(line) for line in lines if line.startswith("{"))
    assert [json.loads(line)["instruction"] for line in dest.read_text(encoding="utf-8").splitlines()] == [text, text]


def test_tokenize_looks_up_only_the_marks_of_its_text(monkeypatch):
    """The token pattern held every combining mark of Unicode, found by asking the category of 130 000 code points
    on the first parse (0.07-0.14 s of every `sigma parse` and each new service worker). Only the text's own odd
    characters are asked now; words keep their marks as before."""
    import unicodedata

    from sigma.parse import phrases

    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(unicodedata, name)

        @staticmethod
        def category(ch):
            calls.append(ch)
            return unicodedata.category(ch)

    monkeypatch.setattr(phrases, "unicodedata", Counting())
    phrases._token_pattern.cache_clear()
    assert tokenize("add a कुत्ता and a c\u0336a\u0336t-like d\u0308og 😊") == [
        "add", "a", "कुत्ता", "and", "a", "c\u0336a\u0336t-like", "d\u0308og", "😊"]
    assert len(calls) < 20, len(calls)
