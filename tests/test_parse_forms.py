"""Instruction forms in the styles of the source benchmarks (MagicBrush, InstructPix2Pix, UltraEdit, AnyEdit,
OmniEdit) through the rules parser: imperatives, let/have/make, 'what if' questions, declaratives, possessives,
compound nouns, counts, colours and materials, relative clauses, negations, casing, trailing punctuation and emoji.

Written blind (177 forms, run once through `sigma parse --file` before any change: 27 misparses); each section after
RIGHT_BEFORE holds the forms one general rule fixed, RIGHT_BEFORE the ones that were already right (a regression
guard). Concepts follow docs/parsing-grounding.md: add has no source, remove no target, an attribute edit has
target = source, a human's pose or action is `person`, articles, counts and size words are dropped."""
from __future__ import annotations

import json

import pytest

from sigma.cli import main
from sigma.parse.rules import parse_rules

# (text, edit_type, source, target)
RIGHT_BEFORE = [
    ("Add a cat on the sofa", "add", None, "cat"),
    ("add two cats sleeping on the bed", "add", None, "cats"),
    ("Put a plant pot on the windowsill.", "add", None, "plant pot"),
    ("add a fire hydrant next to the sidewalk", "add", None, "fire hydrant"),
    ("Remove the fire hydrant", "remove", "fire hydrant", None),
    ("remove the plant pot from the table", "remove", "plant pot", None),
    ("Delete the three birds on the wire", "remove", "birds", None),
    ("erase the man in the red shirt", "remove", "man", None),
    ("Replace the dog with a golden retriever puppy", "replace", "dog", "golden retriever puppy"),
    ("swap the coffee mug for a wine glass", "replace", "coffee mug", "wine glass"),
    ("turn the cat into a lion", "replace", "cat", "lion"),
    ("Paint the walls light blue", "attribute", "walls", "walls"),
    ("make the vase glass", "attribute", "vase", "vase"),
    ("change the shirt to green", "attribute", "shirt", "shirt"),
    ("Turn the image into a pencil sketch", "global", None, None),
    ("make it look like it was taken at night", "global", None, None),
    ("let the woman wear a red scarf", "add", None, "red scarf"),
    ("have the boy hold a balloon", "add", None, "balloon"),
    ("Let the sky be cloudy", "attribute", "sky", "sky"),
    ("have the sky be purple", "attribute", "sky", "sky"),
    ("let there be a rainbow in the sky", "add", None, "rainbow"),
    ("make the man wear a tie", "add", None, "tie"),
    ("make the girl smile", "attribute", "person", "person"),
    ("What if the car were blue?", "attribute", "car", "car"),
    ("what if the dog was a cat?", "replace", "dog", "cat"),
    ("What if the table were made of glass?", "attribute", "table", "table"),
    ("what if there was a boat on the lake", "add", None, "boat"),
    ("what if it was snowing", "global", None, None),
    ("what if the teddy bear was pink", "attribute", "teddy bear", "teddy bear"),
    ("the bird should be a parrot", "replace", "bird", "parrot"),
    ("The wall should be made of brick", "attribute", "wall", "wall"),
    ("There should be a dog next to the girl", "add", None, "dog"),
    ("the sky is now orange", "attribute", "sky", "sky"),
    ("The man is wearing glasses", "add", None, "glasses"),
    ("change the color of the woman's dress to blue", "attribute", "dress", "dress"),   # attribute: target = source
    ("Make the man's shirt striped", "attribute", "shirt", "shirt"),
    ("remove the girl's earrings", "remove", "earrings", None),
    ("replace the boy's hat with a helmet", "replace", "hat", "helmet"),
    ("remove two of the chairs", "remove", "chairs", None),
    ("add a couple of ducks to the pond", "add", None, "ducks"),
    ("remove all the cars", "remove", "cars", None),
    ("change the fence to metal", "attribute", "fence", "fence"),
    ("Turn the bowl into gold", "attribute", "bowl", "bowl"),
    ("remove the cup that is on the table", "remove", "cup", None),
    ("replace the book which is on the shelf with a vase", "replace", "book", "vase"),
    ("make the car that is parked outside red", "attribute", "car", "car"),
    ("delete the person who is standing on the left", "remove", "person", None),
    ("remove the dog but don't change the background", "remove", "dog", None),
    ("Don't change the background, just make the car blue", "attribute", "car", "car"),
    ("Replace the cat with a rabbit and keep everything else the same", "replace", "cat", "rabbit"),
    ("REMOVE THE DOG", "remove", "dog", None),
    ("Add a cat 🐱", "add", None, "cat"),
    ("make the sky blue 😊", "attribute", "sky", "sky"),
    ("replace the car with a bus...", "replace", "car", "bus"),
    ("  add   a   hat  ", "add", None, "hat"),
    ("add a cat ?!", "add", None, "cat"),
    ("remove the dog 🐶🐶🐶", "remove", "dog", None),
    ("rEmOvE tHe CaT", "remove", "cat", None),
    ("put a sombrero on the dog", "add", None, "sombrero"),
    ("give him a mustache", "add", None, "mustache"),
    ("have it be winter", "global", None, None),
    ("Remove the stop sign from the image.", "remove", "stop sign", None),
    ("Replace the traffic light with a street lamp.", "replace", "traffic light", "street lamp"),
    ("Alter the color of the umbrella to yellow.", "attribute", "umbrella", "umbrella"),
    ("Add a small wooden boat in the lake", "add", None, "wooden boat"),
    ("have the horse be a zebra", "replace", "horse", "zebra"),
    ("let it be sunset", "global", None, None),
    ("Put a frisbee in the dog's mouth", "add", None, "frisbee"),
    ("The giraffe should have a hat", "add", None, "hat"),
    ("Let the cat have a bow tie", "add", None, "bow tie"),
    ("Change the color of the car from red to blue.", "attribute", "car", "car"),
    ("Make the cat's fur white.", "attribute", "cat", "cat"),
    ("Change the man's expression to angry.", "attribute", "person", "person"),
    ("What if there were two moons?", "add", None, "moons"),
    ("the plates should be ceramic", "attribute", "plates", "plates"),
    ("the tower is made of bamboo", "attribute", "tower", "tower"),
    ("don't touch the sky, remove the boat", "remove", "boat", None),
    ("replace the tennis racket with a baseball bat", "replace", "tennis racket", "baseball bat"),
    ("make the traffic cone blue", "attribute", "traffic cone", "traffic cone"),
    ("remove the dog -- it's ugly", "remove", "dog", None),
]

# 'let/have/make X wear|hold|carry Y' with a bare noun after the verb, and a human doing an action: the subject read
# on into 'man wear sunglasses' (an attribute edit of that), as only an article after the verb ended it
WEAR_AFTER_A_SUBJECT = [
    ("let the man wear sunglasses", "add", None, "sunglasses"),
    ("have the man wear sunglasses", "add", None, "sunglasses"),
    ("have the teddy bear wear glasses", "add", None, "glasses"),
    ("let the kids wear raincoats", "add", None, "raincoats"),
    ("let the girl hold roses", "add", None, "roses"),
    ("have the dog carry sticks", "add", None, "sticks"),
    ("make the girl hold balloons", "add", None, "balloons"),
    ("let the kids play football", "attribute", "person", "person"),
]

# 'had'/'wore'/'held' after a subject ('what if the horse had wings'): the subject swallowed the verb and the
# parse fell to a default add of 'what'; 'had been' is a passive
PAST_POSSESSION = [
    ("What if the horse had wings?", "add", None, "wings"),
    ("what if the man had a beard", "add", None, "beard"),
    ("what if the man wore a crown", "add", None, "crown"),
    ("what if the dog held a ball", "add", None, "ball"),
    ("the man wore a hat", "add", None, "hat"),
    ("the dog had been removed", "remove", "dog", None),
    ("the car had a red color", "attribute", "car", "car"),
]

# weather placed on an object ('snow on the ground') is a local add, as 'add snow on the ground' already was;
# 'there is/let there be/have there be' made it a global edit
WEATHER_ON_AN_OBJECT = [
    ("have there be snow on the ground", "add", None, "snow"),
    ("there is snow on the roof", "add", None, "snow"),
    ("there should be heavy snow", "global", None, None),
    ("let there be fog", "global", None, None),
    # snow settles on a scene noun too: the mountains are covered, a local add (it was global); weather in or over a
    # scene is still the scene's weather
    ("add snow to the mountains", "add", None, "snow"),
    ("put snow on the mountains", "add", None, "snow"),
    ("let there be snow on the hills", "add", None, "snow"),
    ("add snow in the forest", "global", None, None),
    ("add rain to the city", "global", None, None),
    ("add snow to the sky", "global", None, None),
    # 'cover X with Y' puts Y on X: what 'add Y to X' is (it was a global edit by keyword, whatever covered what)
    ("cover the mountains with snow", "add", None, "snow"),
    ("cover the mountains in snow", "add", None, "snow"),
    ("blanket the field in snow", "add", None, "snow"),
    ("cover the table in the kitchen with a white cloth", "add", None, "white cloth"),
    ("sprinkle the cake with sugar", "add", None, "sugar"),
    ("decorate the tree with lights", "add", None, "lights"),
    ("cover everything in snow", "global", None, None),
    ("cover the city with fog", "global", None, None),
    ("cover the window", "attribute", "window", "window"),
    ("cover photo of a cat", "add", None, "cover photo"),
    ("blanket fort in the living room", "add", None, "blanket fort"),
    ("sprinkle some snow on the roof", "add", None, "snow"),
    ("drape a cloth over the table", "add", None, "cloth"),
    ("cover up the scratch on the car", "remove", "scratch", None),
]

# materials the lexicon lacked ('chocolate', 'wax', 'bronze'), a state it lacked ('bare'), and 'out of' a material:
# 'what if the cake was chocolate' was a replace of the cake by 'chocolate', 'make the bench out of stone' an
# attribute of 'bench out'
MATERIALS = [
    ("what if the cake was chocolate", "attribute", "cake", "cake"),
    ("make the cake chocolate", "attribute", "cake", "cake"),
    ("the candle should be wax", "attribute", "candle", "candle"),
    ("the vase should be bronze", "attribute", "vase", "vase"),
    ("add a chocolate bar", "add", None, "chocolate bar"),
    ("make the trees bare", "attribute", "trees", "trees"),
    ("Make the bench out of stone", "attribute", "bench", "bench"),
    ("make the house out of candy", "attribute", "house", "house"),
]

# 'without' ends a phrase ('the sky pink | without changing anything else'); a first 'Without changing X, ...' is a
# constraint, not a removal of 'changing'
WITHOUT_A_CHANGE = [
    ("make the sky pink without changing anything else", "attribute", "sky", "sky"),
    ("make the ocean green without altering the boat", "attribute", "ocean", "ocean"),
    ("remove the cars without touching the buildings", "remove", "cars", None),
    ("Without changing the person, make the background a beach", "replace", "background", "beach"),
    ("without the people", "remove", "people", None),
    ("a scene without people", "remove", "people", None),
]

# a surface noun after materials only is the thing itself: 'a stone wall' was the concept 'stone'
SURFACE_THINGS = [
    ("Replace the wooden fence with a stone wall.", "replace", "wooden fence", "stone wall"),
    ("replace the jacket with a leather coat", "replace", "jacket", "leather coat"),
    ("make the white wall red", "attribute", "white wall", "white wall"),
    ("change the lake surface to ice", "attribute", "lake", "lake"),
]

# a style word modifying a new thing: 'into a vintage bicycle' was a style (attribute) of the car
STYLED_THINGS = [
    ("Transform the red sports car into a vintage bicycle.", "replace", "red sports car", "vintage bicycle"),
    ("turn the dog into a cartoon dog", "attribute", "dog", "dog"),
    ("turn the house into a watercolor painting", "attribute", "house", "house"),
    ("Turn the photo into a Van Gogh painting", "global", None, None),
]

# 'have/let a X <doing|placed>': an indefinite object is new, so the edit adds it ('have a bird sitting on the
# fence' was an attribute edit of 'bird')
NEW_THING_PLACED = [
    ("Have a bird sitting on the fence", "add", None, "bird"),
    ("let a bird fly over the lake", "add", None, "bird"),
    ("have a cat in the window", "add", None, "cat"),
    ("Let a rainbow appear in the sky", "add", None, "rainbow"),
    ("have a red color", "global", None, None),
]

# words keep their combining marks (Devanagari vowel signs: 'कुत्ता' was cut to 'क'), and 'w/' 'w/o' are 'with'
# 'without' ('replace the sandwich w/ a burger' lost its burger)
TOKENS = [
    ("add a कुत्ता on the sofa", "add", None, "कुत्ता"),
    ("remove the बिल्ली", "remove", "बिल्ली", None),
    ("add a c\u0336a\u0336t", "add", None, "c\u0336a\u0336t"),
    ("replace the sandwich w/ a burger", "replace", "sandwich", "burger"),
    ("remove the car w/o touching the road", "remove", "car", None),
]

# a passive in any tense ('is added', 'is being removed', 'was replaced with', 'has been added', 'gets removed'):
# only 'be removed/replaced' was read, the rest were attribute edits of the subject ('a hat is added on the man')
PASSIVE_VOICE = [
    ("a hat is added on the man", "add", None, "hat"),
    ("A hat should be added to the man", "add", None, "hat"),
    ("a cat has been added to the sofa", "add", None, "cat"),
    ("a lamp is placed on the table", "add", None, "lamp"),
    ("a boat is inserted in the lake", "add", None, "boat"),
    ("the dog is being removed", "remove", "dog", None),
    ("the tree was removed", "remove", "tree", None),
    ("the dog gets removed", "remove", "dog", None),
    ("the dog was replaced with a cat", "replace", "dog", "cat"),
    ("The hat got replaced with a crown.", "replace", "hat", "crown"),
    ("the bus is being swapped for a tram", "replace", "bus", "tram"),
    ("the lights are switched off", "attribute", "lights", "lights"),
]

# a wish with any adverb or tense ('ive always wanted', "we'd really like"): only 'i want' and 'i would like' were
# known, so 'ive always wanted a dog here' fell to a default add of 'ive always'
WISHES = [
    ("ive always wanted a dog here", "add", None, "dog"),
    ("I've always wanted a pool in the garden", "add", None, "pool"),
    ("we'd really like a fountain in the park", "add", None, "fountain"),
    ("i wanted two cats on the bed", "add", None, "cats"),
    ("i want the dog removed", "remove", "dog", None),
    ("i wish the sky was blue", "attribute", "sky", "sky"),
    ("I want the sky purple", "attribute", "sky", "sky"),
    ("i love this photo, add a hat", "add", None, "hat"),
]

# the four forms left wrong at stop 40, each fixed by a general rule, and the forms that rule also reads:
# light as a mass noun is the image's lighting (was an add of 'light'); a thing's display verb ('show', 'say',
# 'read') changes its look (was a default add of 'clock'); 'put the X in a Y' with X already there adds Y (was an
# add of the cat); a question 'what/how ... if' is the supposition after 'if' (was a default add of 'what'); and a
# yes/no question ('can the dog be removed?'), 'how about', 'why not' lead-ins (were default adds of 'can', 'why')
QUESTIONS_AND_STATES = [
    ("let there be light", "global", None, None),
    ("there should be more light", "global", None, None),
    ("let there be a light on the table", "add", None, "light"),
    ("the clock should show 3 o'clock", "attribute", "clock", "clock"),
    ("The television should display a football game", "attribute", "television", "television"),
    ("the man should read a book", "attribute", "person", "person"),
    ("put the cat in a spacesuit", "add", None, "spacesuit"),
    ("Put the dog on a leash", "add", None, "leash"),
    ("put the cat on the sofa", "add", None, "cat"),
    ("what would it look like if the house were on fire?", "attribute", "house", "house"),
    ("How would it look if the car were red?", "attribute", "car", "car"),
    ("what would happen if the dog was a cat", "replace", "dog", "cat"),
    ("can the dog be removed?", "remove", "dog", None),
    ("could some flowers be added?", "add", None, "flowers"),
    ("how about adding a hat to the snowman", "add", None, "hat"),
    ("Why not add a boat to the lake?", "add", None, "boat"),
    ("the bench is replaced by a swing and a cat is added", "replace", "bench", "swing"),
    ("Could you make the sky darker and add some stars?", "attribute", "sky", "sky"),
]

# a display verb in the present ends its subject as after a modal: 'the screen shows a cat' was a default add of
# 'screen shows' (the subject swallowed the verb), 'the poster shows a mountain' a keyword global edit
DISPLAYED = [
    ("the screen shows a cat", "attribute", "screen", "screen"),
    ("The poster shows a mountain", "attribute", "poster", "poster"),
    ("the tv displays the news", "attribute", "tv", "tv"),
    ("the clock shows 5 pm", "attribute", "clock", "clock"),
    ("the display case is empty", "attribute", "display case", "display case"),
]

# 'put it/them in a Y': a pronoun is already in the image as a definite phrase is, so Y is what is new ('put it in a
# frame' added `it`, a concept no detector finds)
PUT_A_PRONOUN = [
    ("put it in a frame", "add", None, "frame"),
    ("Put them on a plate", "add", None, "plate"),
    # 'put it on the table': 'it' names nothing, the table is there already, so the changed region is the table's (it
    # was an add of 'it'); after an add the pronoun is the thing just added, and where it goes is part of that edit
    ("put it on the table", "attribute", "table", "table"),
    ("put them in the basket", "attribute", "basket", "basket"),
    ("put it on a table", "add", None, "table"),
]

# 'have/let' with any count or 'here'/'there' names a new thing ('have two cats on the bed' was a background replace
# by 'bed', 'have a dog here' an attribute edit of the dog)
HAVE_A_COUNT = [
    ("have a dog here", "add", None, "dog"),
    ("have two cats on the bed", "add", None, "cats"),
    ("have some flowers there", "add", None, "flowers"),
    ("let three birds fly over the lake", "add", None, "birds"),
]

# a comparative or superlative of any listed value or weather word ('wetter', 'shinier', 'stormier', 'calmer'): only a
# closed list of comparatives was known, so 'make the road wetter' made the concept 'road wetter'
COMPARATIVES = [
    ("make the road wetter", "attribute", "road", "road"),
    ("make the sea calmer", "attribute", "sea", "sea"),
    ("Make the hair curlier", "attribute", "hair", "hair"),
    ("make the dog fluffier", "attribute", "dog", "dog"),
    ("make the sky cloudier", "attribute", "sky", "sky"),
    ("add water to the glass", "add", None, "water"),
    ("replace the poster with a flower", "replace", "poster", "flower"),
]

# a pronoun of a person as the object of make/let/have is `person` ('make him bald' was an attribute edit of 'him',
# 'make her smile' of 'smile', 'make her happy' global, 'let her wear a dress' a replace of 'wear'); 'her' before a
# noun of hers stays a possessive
PERSON_PRONOUNS = [
    ("make him bald", "attribute", "person", "person"),
    ("Make her smile", "attribute", "person", "person"),
    ("make her very happy", "attribute", "person", "person"),
    ("let her wear a dress", "add", None, "dress"),
    ("have her hold a cup", "add", None, "cup"),
    ("make her a queen", "replace", "person", "queen"),
    ("make her hair blonde", "attribute", "hair", "hair"),
    ("make her smile brighter", "attribute", "smile", "smile"),
    ("make her red dress blue", "attribute", "red dress", "red dress"),
    # 'them'/'everyone' doing what only people do (an expression, a gesture) are people: 'make them smile' was an
    # attribute edit of 'them'; 'make them shiny', 'make them run' say nothing of people, and 'them' names nothing a
    # detector finds (PRONOUN_ONLY)
    ("make them smile", "attribute", "person", "person"),
    ("make everyone laugh", "attribute", "person", "person"),
    ("have them wave", "attribute", "person", "person"),
    ("make them shiny", "attribute", None, None),
]

# A pronoun alone as the concept names nothing a detector can look for (the detector was asked for 'it', 'them'), as
# 'remove this' already left no concept: the edit keeps its type, without a concept. 'make it run' alone: a thing
# does something, and a picture does not run (it was a global edit); 'make it rain', 'make it look vintage' and 'make
# it turn red' stay global, 'make it wear a hat' adds the hat.
PRONOUN_ONLY = [
    ("make it run", "attribute", None, None),
    ("make it jump over the fence", "attribute", None, None),
    ("have it fly over the lake", "attribute", None, None),
    ("let it sit on the bench", "attribute", None, None),
    ("make them run", "attribute", None, None),
    ("put it there", "add", None, None),
    ("put them over there", "add", None, None),
    ("place it here", "add", None, None),
    ("add it", "add", None, None),
    ("remove it", "remove", None, None),
    ("get rid of them", "remove", None, None),
    ("replace it with a cat", "replace", None, "cat"),
    ("add something", "add", None, None),
    ("make it wear a hat", "add", None, "hat"),
    ("make it rain", "global", None, None),
    ("make it snow", "global", None, None),
    ("make it look vintage", "global", None, None),
    ("make it turn red", "global", None, None),
    ("add a dog and make it run", "add", None, "dog"),
]

# 'move' was no editing verb: 'move the dog to the left' was a default add of 'move', 'move it to the left' a global
# edit. A moved thing is in both images, elsewhere: an attribute edit (as 'rotate the chair'); how far or where it
# goes is no part of its concept; moving the camera or view moves every pixel; 'move it here' names no thing.
MOVED = [
    ("move the dog to the left", "attribute", "dog", "dog"),
    ("move the dog here", "attribute", "dog", "dog"),
    ("Please move the vase over to the window", "attribute", "vase", "vase"),
    ("move the red car closer to the house", "attribute", "red car", "red car"),
    ("move the dog and the cat closer together", "attribute", "dog and cat", "dog and cat"),
    ("relocate the lamp next to the sofa", "attribute", "lamp", "lamp"),
    ("move the camera to the left", "global", None, None),
    ("move it here", "attribute", None, None),
    ("move it to the left", "attribute", None, None),
]

# 'the roof of the house should be red': the predicate was looked for at 'of', so the sentence fell to a default add of
# 'roof'; the owner says which roof, as in 'make the roof of the house red'. 'snow should cover the mountains' is
# 'cover the mountains with snow' (an add of snow, as 'add snow to the mountains'): it was a global edit by keyword.
OWNED_AND_COVERING = [
    ("the cover of the book should be red", "attribute", "cover", "cover"),
    ("the roof of the house is red", "attribute", "roof", "roof"),
    ("the handle of the door should be golden", "attribute", "handle", "handle"),
    ("the leg of the chair should be removed", "remove", "leg", None),
    ("snow should cover the mountains", "add", None, "snow"),
    ("snow covers the roof", "add", None, "snow"),
    ("ivy should cover the wall", "add", None, "ivy"),
    ("a blanket should cover the bed", "add", None, "blanket"),
]

# A question asked as 'we'/'I' ('can we add a rainbow?') was a default add of 'can we add'; 'X needs (to be) Y' read
# 'needs' into the subject ('the dog needs a hat': add 'dog needs'); a text that only constrains or negates ('keep
# the background unchanged', "don't touch the dog") was a default add of 'keep', of "don't touch": it names no edit
# (global, as an unreadable text), and 'no people' asks for none, as 'without people' does.
ASKED_NEEDED_NEGATED = [
    ("can we add a rainbow?", "add", None, "rainbow"),
    ("could we remove the car?", "remove", "car", None),
    ("shall we make the sky pink?", "attribute", "sky", "sky"),
    ("can i add a dog?", "add", None, "dog"),
    ("why don't you add a cat", "add", None, "cat"),
    ("the dog needs a hat", "add", None, "hat"),
    ("the man needs sunglasses", "add", None, "sunglasses"),
    ("the sky needs to be bluer", "attribute", "sky", "sky"),
    ("the car needs to be removed", "remove", "car", None),
    ("there needs to be a cat on the sofa", "add", None, "cat"),
    ("this photo needs more contrast", "global", None, None),
    ("we need to remove the dog", "remove", "dog", None),
    ("keep the background unchanged", "global", None, None),
    ("don't touch the dog", "global", None, None),
    ("leave the sky as it is", "global", None, None),
    ("no changes", "global", None, None),
    ("no people", "remove", "people", None),
]

# An emoji where a noun is expected names the thing ('remove the 🐶' was a remove of nothing, an emoji being no word);
# one after a noun is left alone.
EMOJI_NOUNS = [
    ("remove the \U0001F436", "remove", "dog", None),
    ("add a \U0001F3A9 to the man", "add", None, "top hat"),
    ("replace the \U0001F431 with a \U0001F436", "replace", "cat", "dog"),
    ("add \U0001F308", "add", None, "rainbow"),
    ("add a cat \U0001F60A", "add", None, "cat"),
]

# 'a red one' stands for the other phrase's thing ('replace the blue car with a red one' replaced it by 'red', a
# colour no detector finds); 'everyone' is people ('remove everyone' asked the detector for 'everyone').
ONE_AND_EVERYONE = [
    ("replace the blue car with a red one", "replace", "blue car", "red car"),
    ("replace the old chairs with new ones", "replace", "old chairs", "new chairs"),
    ("what about a red car instead of the blue one", "replace", "blue car", "red car"),
    ("replace the sign with one that says ENTER", "replace", "sign", "sign"),
    ("remove everyone", "remove", "person", None),
    ("remove everybody from the beach", "remove", "person", None),
]

# An instruction wrapped whole in quotes (pasted from a data set or a chat) was one literal token: a default add of
# the text '"remove the dog"'. A quoted text that is no instruction stays the text it is.
QUOTED_WHOLE = [
    ('"remove the dog"', "remove", "dog", None),
    ("'add a cat'", "add", None, "cat"),
    ("\u201cmake the sky red\u201d", "attribute", "sky", "sky"),
    ('"please remove the dog."', "remove", "dog", None),
    ('"HELLO"', "add", None, '"HELLO"'),
]

# 'fill X with Y' puts Y there (a first 'fill' was a constraint: no edit); 'the dog has disappeared' was an add of
# 'disappeared'; 'take the dog out', 'get the dog out of the picture' were a default add of 'take', an attribute of
# 'dog'. A later 'and fill the gap with grass' stays a constraint; 'get the cat out of the box' is no removal.
FILLED_AND_GONE = [
    ("fill the sky with stars", "add", None, "stars"),
    ("fill the glass with wine", "add", None, "wine"),
    ("remove the dog and fill the gap with grass", "remove", "dog", None),
    ("the dog has disappeared", "remove", "dog", None),
    ("take the dog out", "remove", "dog", None),
    ("take the hat off", "remove", "hat", None),
    ("get the dog out of the picture", "remove", "dog", None),
    ("get the cat out of the box", "attribute", "cat", "cat"),
]

# The frame grows ('extend the image to the left' was a default add of 'extend'): global; 'cut down the tree' was a
# default add of 'cut down'; a contrast 'not X' after an edit was an attribute edit of 'not'.
GROWN_CUT_NOT = [
    ("extend the image to the left", "global", None, None),
    ("expand the canvas", "global", None, None),
    ("outpaint the image", "global", None, None),
    ("extend the table", "attribute", "table", "table"),
    ("cut down the tree", "remove", "tree", None),
    ("cut the tree down", "remove", "tree", None),
    ("chop down the tree", "remove", "tree", None),
    ("not the dog", "global", None, None),
]

# InstructPix2Pix-style: 'turn him into a cyborg' replaced 'him' (a concept no detector finds), 'turn her into a queen'
# was global; 'make the people zombies' an attribute edit of 'people zombies'.
IP2P_STYLE = [
    ("turn him into a cyborg", "replace", "person", "cyborg"),
    ("turn her into a queen", "replace", "person", "queen"),
    ("turn her hair blue", "attribute", "hair", "hair"),
    ("make the people zombies", "replace", "people", "zombies"),
    ("make the mountains volcanoes", "replace", "mountains", "volcanoes"),
    ("make the trees lollipops", "replace", "trees", "lollipops"),
    # a mood or texture given is the thing's look, no new thing (an add of 'cozy atmosphere', of 'cozy')
    ("Give the room a cozy atmosphere", "attribute", "room", "room"),
    ("Give the room a cozy, warm atmosphere", "attribute", "room", "room"),
    ("give the wall a rough texture", "attribute", "wall", "wall"),
    ("give the man a hat", "add", None, "hat"),
    # an attribute noun before the value ('the car colour | blue') and a colour in -ish ('bluish') were read into the
    # concept ('car colour', 'sky bluish')
    ("make the car colour blue", "attribute", "car", "car"),
    ("make the shirt color red", "attribute", "shirt", "shirt"),
    ("make the sky bluish", "attribute", "sky", "sky"),
    ("make the walls reddish", "attribute", "walls", "walls"),
]

# A supposition of an edit done by us or you is that edit ('what if we added a cat?' was an add of 'we', 'what if i
# replaced the dog with a cat' a replace of 'i'); a wish told as what would be nice, better or preferred is the edit
# it asks for (global edits of 'it', a default add of 'i want'/"i'd prefer").
SUPPOSED_AND_WISHED = [
    ("what if we added a cat?", "add", None, "cat"),
    ("what if we removed the car?", "remove", "car", None),
    ("what if you made the sky red?", "attribute", "sky", "sky"),
    ("what if i replaced the dog with a cat", "replace", "dog", "cat"),
    ("imagine we turned the car into a boat", "replace", "car", "boat"),
    ("do you think you could remove the car?", "remove", "car", None),
    ("I want the dog gone", "remove", "dog", None),
    ("I'd prefer the sky to be blue", "attribute", "sky", "sky"),
    ("I prefer the sky blue", "attribute", "sky", "sky"),
    ("it would be nice to have a dog here", "add", None, "dog"),
    ("it would be cool if the car was red", "attribute", "car", "car"),
    ("it would look better without the car", "remove", "car", None),
    ("would it look better with a hat on the dog?", "add", None, "hat"),
    ("What would the picture look like with a cat instead of the dog?", "replace", "dog", "cat"),
    ("how would the room look with a red sofa?", "add", None, "red sofa"),
    ("how would it look without the car?", "remove", "car", None),
    ("instead of a dog, make it a cat", "replace", "dog", "cat"),
    ("instead of a dog, add a cat", "replace", "dog", "cat"),
    ("instead of blue, make the sky red", "attribute", "sky", "sky"),
]

# all but X: the changed region is everything else, the background ('remove everything but the dog' removed
# 'everything', which a detector cannot find; 'keep only the dog' was a default add of 'keep only'); all but N of the
# X: the other X ('delete all but one of the birds' removed nothing). A later 'keep only'/'leaving only' stays a
# constraint.
ALL_BUT = [
    ("remove everything but the dog", "remove", "background", None),
    ("Remove everything except for the two people", "remove", "background", None),
    ("erase everything apart from the woman", "remove", "background", None),
    ("keep only the dog", "remove", "background", None),
    ("Leave only the cat", "remove", "background", None),
    ("delete all but one of the birds", "remove", "birds", None),
    ("remove all but two of the cars", "remove", "cars", None),
    ("remove the cat and keep only the dog", "remove", "cat", None),
    ("remove all the birds except one", "remove", "birds", None),
]

# make/let X disappear or vanish: X goes ('make the dog disappear' was an attribute edit of 'dog disappear', 'make
# the person on the right disappear' a background replace by 'right disappear')
DISAPPEAR = [
    ("make the dog disappear", "remove", "dog", None),
    ("make the person on the right disappear", "remove", "person", None),
    ("Make the trash can on the sidewalk vanish.", "remove", "trash can", None),
    ("let the car vanish", "remove", "car", None),
    ("make it disappear", "global", None, None),
]

# add/put X in place of (instead of) Y replaces Y by X ('add a tiger in place of the dog' was an add of the tiger, so
# the mask missed the dog's region)
IN_PLACE_OF = [
    ("add a tiger in place of the dog", "replace", "dog", "tiger"),
    ("put a laptop instead of the book", "replace", "book", "laptop"),
    ("add a cat instead", "add", None, "cat"),
    # 'where the book is' names the thing taken over as 'in place of' does (it was an add of the laptop alone)
    ("put a laptop where the book is", "replace", "book", "laptop"),
    ("add a vase where the lamp was", "replace", "lamp", "vase"),
    ("place a cat where the dog used to be", "replace", "dog", "cat"),
    ("put a laptop where the book is on the table", "replace", "book", "laptop"),
    ("add a lamp where the light is dim", "add", None, "lamp"),
    ("put a cat where the dog is sleeping", "add", None, "cat"),
]

# give X some/two Y: the object after the receiver starts at its own determiner ('give the sky some stars' was an
# attribute edit of 'sky stars'; only a/an/the ended the receiver)
GIVE_SOME = [
    ("give the sky some stars", "add", None, "stars"),
    ("give the tree some red apples", "add", None, "red apples"),
    ("give the car two more wheels", "add", None, "wheels"),
    ("give the man a hat", "add", None, "hat"),
]

# change/turn X to say|show|read|display Y: what X displays changes, its look (an attribute, as 'the sign should say
# SALE'); they were replaces of the sign by 'say open'. Written text becomes the quoted text, as 'replace the text
# with HELLO' does
CHANGE_TO_DISPLAY = [
    ("change the sign to say OPEN", "attribute", "sign", "sign"),
    ("change the clock to show 5 o'clock", "attribute", "clock", "clock"),
    ("edit the banner to read Happy Birthday", "attribute", "banner", "banner"),
    ("Change the screen to display a map", "attribute", "screen", "screen"),
    ("change the text to say HELLO", "replace", "text", 'text "HELLO"'),
    ("change the text on the sign to read SALE", "replace", "text", 'text "SALE"'),
]

# An ordinal says which one of several, which a detector cannot use: dropped like a count ('remove the second car'
# asked the detector for 'second car'); an ordinal that is part of a noun stays ('first aid kit', 'the second floor')
ORDINALS = [
    ("remove the second car", "remove", "car", None),
    ("delete the third window from the left", "remove", "window", None),
    ("remove the 2nd bottle", "remove", "bottle", None),
    ("replace the last chair with a stool", "replace", "chair", "stool"),
    ("make the first and second cars red", "attribute", "cars", "cars"),
    ("remove the first aid kit", "remove", "first aid kit", None),
    ("add a first aid kit on the wall", "add", None, "first aid kit"),
    ("paint the second floor blue", "attribute", "second floor", "second floor"),
    # the nouns an ordinal makes are WordNet's (lexicon.ORDINAL_COMPOUNDS; it was a list of 12), a storey or a rank
    # with any ordinal; a person is picked by position ('the first lady' kept 'first lady')
    ("add a first class seat", "add", None, "first class seat"),
    ("remove the second hand watch", "remove", "second hand watch", None),
    ("remove the third party logo", "remove", "third party logo", None),
    ("add a fifth wheel to the trailer", "add", None, "fifth wheel"),
    ("paint the fifth floor blue", "attribute", "fifth floor", "fifth floor"),
    ("add a third place medal", "add", None, "third place medal"),
    ("remove the second person from the left", "remove", "person", None),
    ("remove the first lady", "remove", "lady", None),
    ("remove the last word on the sign", "remove", "last word", None),
]

# swap/switch/exchange two things (no 'with'/'for'): each shows up where the other was, so the source is the pair and
# the target the pair in the other order (it was a replace of 'dog and cat' by nothing: the edited image unsearched)
SWAPPED_PAIRS = [
    ("swap the dog and the cat", "replace", "dog and cat", "cat and dog"),
    ("swap the positions of the dog and the cat", "replace", "dog and cat", "cat and dog"),
    ("switch the lamp and the vase", "replace", "lamp and vase", "vase and lamp"),
    ("exchange the red car and the blue truck", "replace", "red car and blue truck", "blue truck and red car"),
    ("swap places of the man and the woman", "replace", "man and woman", "woman and man"),
    ("the dog and the cat swap places", "replace", "dog and cat", "cat and dog"),
    ("swap the first and second cars", "replace", "cars", "cars"),
    ("swap the two cars", "replace", "cars", "cars"),
    ("swap the dog with the cat", "replace", "dog", "cat"),
    ("swap the coffee mug for a wine glass", "replace", "coffee mug", "wine glass"),
]

# A time of day, season or weather as the changed object is the whole scene at that time: global ('turn the daytime
# scene into night' was an attribute edit of 'daytime', 'turn day into night' of 'day'); a weather thing lying somewhere
# is still a thing ('turn the snow into grass')
TIME_SCENES = [
    ("turn the daytime scene into night", "global", None, None),
    ("change the daytime scene to night", "global", None, None),
    ("turn day into night", "global", None, None),
    ("turn the winter into summer", "global", None, None),
    ("change the sunny day into a rainy evening", "global", None, None),
    ("turn the snow into grass", "replace", "snow", "grass"),
    # a place at another time is the whole scene too ('turn the daytime street into night' was an attribute edit of
    # 'daytime street'); the sky becoming a sunset is still the sky, snow still lies on what it covers
    ("turn the daytime street into night", "global", None, None),
    ("turn the street into night", "global", None, None),
    ("change the city to nighttime", "global", None, None),
    ("turn the summer meadow into winter", "global", None, None),
    ("change the beach to a sunset", "global", None, None),
    ("make the city at night", "global", None, None),
    ("change the sky to a sunset", "replace", "sky", "sunset"),
    ("turn the street snowy", "attribute", "street", "street"),
    ("turn the daytime street into a night market", "replace", "background", "night market"),
    # said as a state or an inline value: the same scene at another time
    ("the street should be at night", "global", None, None),
    ("what if the street were at night", "global", None, None),
    ("make the street nighttime", "global", None, None),
    ("make the forest foggy", "global", None, None),
    ("make the street snowy", "attribute", "street", "street"),
    ("make the sky sunny", "attribute", "sky", "sky"),
    ("the dog should be at the door", "attribute", "dog", "dog"),
]

# zoom/crop change the framing of the whole picture: global ('zoom in on the cat' was a default add of 'zoom', 'crop
# the image to the cat' of 'crop'); 'crop out X' removes X; flip/rotate turn the picture, or a named thing
FRAMING = [
    ("zoom in on the cat", "global", None, None),
    ("zoom out", "global", None, None),
    ("please zoom into the cat's face", "global", None, None),
    ("crop the image to the cat", "global", None, None),
    ("crop out the dog", "remove", "dog", None),
    ("crop the dog out of the photo", "remove", "dog", None),
    ("flip the image horizontally", "global", None, None),
    ("rotate the image 90 degrees", "global", None, None),
    ("rotate the chair 90 degrees", "attribute", "chair", "chair"),
    ("add crop circles to the field", "add", None, "crop circles"),
    ("crop circles in a wheat field", "add", None, "crop circles"),
    ("flip flops on the beach", "add", None, "flip flops"),
    ("zoom closer", "global", None, None),
]

# change/edit X to VERB: what X does, as 'make X VERB' ('change the man to read a book' was a replace of the man by
# 'read'); a wear verb adds what is worn
CHANGE_TO_ACT = [
    ("change the man to read a book", "attribute", "person", "person"),
    ("change the woman to be sitting", "attribute", "person", "person"),
    ("edit the girl to wave her hand", "attribute", "person", "person"),
    ("change the dog to sit", "attribute", "dog", "dog"),
    ("change the boy to hold an umbrella", "add", None, "umbrella"),
    ("turn the man into a cook", "replace", "man", "cook"),
]

FORMS = (
    RIGHT_BEFORE
    + WEAR_AFTER_A_SUBJECT
    + PAST_POSSESSION
    + WEATHER_ON_AN_OBJECT
    + MATERIALS
    + WITHOUT_A_CHANGE
    + SURFACE_THINGS
    + STYLED_THINGS
    + NEW_THING_PLACED
    + TOKENS
    + PASSIVE_VOICE
    + WISHES
    + QUESTIONS_AND_STATES
    + DISPLAYED
    + PUT_A_PRONOUN
    + HAVE_A_COUNT
    + COMPARATIVES
    + PERSON_PRONOUNS
    + PRONOUN_ONLY
    + MOVED
    + SUPPOSED_AND_WISHED
    + IP2P_STYLE
    + GROWN_CUT_NOT
    + FILLED_AND_GONE
    + QUOTED_WHOLE
    + ONE_AND_EVERYONE
    + EMOJI_NOUNS
    + ASKED_NEEDED_NEGATED
    + OWNED_AND_COVERING
    + ALL_BUT
    + DISAPPEAR
    + IN_PLACE_OF
    + GIVE_SOME
    + CHANGE_TO_DISPLAY
    + ORDINALS
    + SWAPPED_PAIRS
    + TIME_SCENES
    + FRAMING
    + CHANGE_TO_ACT
)


@pytest.mark.parametrize("text,edit_type,source,target", FORMS, ids=[c[0][:40] for c in FORMS])
def test_instruction_forms(text, edit_type, source, target):
    p = parse_rules(text)
    assert (p.edit_type, p.source, p.target) == (edit_type, source, target)


def test_the_forms_through_the_cli_file_reader(tmp_path, capsys):
    """The same table through `sigma parse --file` (the path the misparse count was taken on): every form right."""
    f = tmp_path / "forms.jsonl"
    f.write_text("".join(json.dumps({"instruction": t, "edit_type": e, "source": s, "target": g}) + "\n"
                         for t, e, s, g in FORMS), encoding="utf-8")
    assert main(["parse", "--file", str(f), "--show-errors"]) == 0
    out = capsys.readouterr().out
    summary = [json.loads(line) for line in out.splitlines() if line.startswith('{"backend"')][-1]
    assert summary["n"] == len(FORMS)
    assert summary["type_accuracy"] == 1.0 and summary["concept_match"] == 1.0, out


@pytest.mark.parametrize("text,edits", [
    ("the bench is replaced by a swing and a cat is added", [("replace", "bench", "swing"), ("add", None, "cat")]),
    ("Could you make the sky darker and add some stars?", [("attribute", "sky", "sky"), ("add", None, "stars")]),
    ("put the cat in a box and add a dog", [("add", None, "box"), ("add", None, "dog")]),
    ("can the dog be removed and a cat added?", [("remove", "dog", None)]),
])
def test_multi_clause_forms(text, edits):
    """Multi-clause forms of the new rules: each clause its own edit (passive clauses included)."""
    assert [(e.edit_type, e.source, e.target) for e in parse_rules(text).edits][:len(edits)] == edits


@pytest.mark.parametrize("text,edits", [
    ("the flowers should be yellow and the grass taller", [("attribute", "flowers", "flowers"),
                                                           ("attribute", "grass", "grass")]),
    ("the sky is blue and the grass green", [("attribute", "sky", "sky"), ("attribute", "grass", "grass")]),
    ("the bird should be a parrot and the dog a cat", [("replace", "bird", "parrot"), ("replace", "dog", "cat")]),
    ("the cat should be white, the dog brown and the house red",
     [("attribute", "cat", "cat"), ("attribute", "dog", "dog"), ("attribute", "house", "house")]),
    ("what if the car were blue and the sky green", [("attribute", "car", "car"), ("attribute", "sky", "sky")]),
    ("the car should be red and shiny", [("attribute", "car", "car")]),
    ("make the boat bigger and the sea calmer", [("attribute", "boat", "boat"), ("attribute", "sea", "sea")]),
    ("make the water rougher and the sky stormier", [("attribute", "water", "water"), ("attribute", "sky", "sky")]),
    ("the dog should be removed and the cat", [("remove", "dog", None)]),
])
def test_a_declaratives_be_left_out_of_the_next_clause(text, edits):
    """'the flowers should be yellow and the grass taller': the second clause leaves out 'should be' (gapping after
    a declarative, as 'make the sky purple and the grass yellow' leaves out 'make'); its edit was lost. Exact lists:
    'red and shiny' stays one edit."""
    assert [(e.edit_type, e.source, e.target) for e in parse_rules(text).edits] == edits


@pytest.mark.parametrize("text,edits", [
    ("add a hat on the snowman and a scarf around its neck", [("add", None, "hat"), ("add", None, "scarf")]),
    ("put a collar around the dog's neck and a bell on the cat", [("add", None, "collar"), ("add", None, "bell")]),
    ("add a fence around the house and a tree", [("add", None, "fence"), ("add", None, "tree")]),
    ("make the clouds around the moon pink", [("attribute", "clouds", "clouds")]),
])
def test_around_places_a_gapped_object(text, edits):
    """'around' places an object as 'on' does, so a second object after it is its own edit (gapping): 'add a hat on
    the snowman and a scarf around its neck' lost the scarf, 'add a fence around the house and a tree' the tree."""
    assert [(e.edit_type, e.source, e.target) for e in parse_rules(text).edits] == edits


@pytest.mark.parametrize("text,edits", [
    ("the dog should be wearing a hat and the cat a scarf", [("add", None, "hat"), ("add", None, "scarf")]),
    ("let the man wear a hat and the woman a scarf", [("add", None, "hat"), ("add", None, "scarf")]),
    ("the man held a cup and the woman a phone", [("add", None, "cup"), ("add", None, "phone")]),
    ("have the boy hold a balloon and the girl a kite", [("add", None, "balloon"), ("add", None, "kite")]),
    ("let the man wear a hat and a scarf", [("add", None, "hat and scarf")]),
    ("the man should be wearing a hat and the woman should be removed", [("add", None, "hat"),
                                                                         ("remove", "woman", None)]),
])
def test_a_wear_verb_left_out_of_the_next_clause(text, edits):
    """'the dog should be wearing a hat and the cat a scarf': the second clause leaves out the wear verb (gapping, as
    '... and the grass taller' leaves out 'should be'); it was one add of 'hat and cat', the scarf lost. Two things
    worn by one subject stay one edit."""
    assert [(e.edit_type, e.source, e.target) for e in parse_rules(text).edits] == edits


@pytest.mark.parametrize("text,edits", [
    ("add a cat and put it on the sofa", [("add", None, "cat")]),
    ("add a cat. Put it on the sofa.", [("add", None, "cat")]),
    ("remove the dog and put it on the table", [("remove", "dog", None), ("add", None, "dog")]),
    ("remove the dog and add it back", [("remove", "dog", None), ("add", None, "dog")]),
    ("remove the cat. Then put it back on the sofa.", [("remove", "cat", None), ("add", None, "cat")]),
    ("remove the dogs and add them again", [("remove", "dogs", None), ("add", None, "dogs")]),
    ("put the vase back", [("add", None, "vase")]),
    ("remove the cat from the photo and replace it with a dog", [("replace", "cat", "dog")]),
    ("remove the cars and replace them with bikes", [("replace", "cars", "bikes")]),
    ("remove the cat. Replace it with a dog.", [("remove", "cat", None), ("replace", "cat", "dog")]),
])
def test_putting_what_was_just_added_is_no_edit(text, edits):
    """'add a cat and put it on the sofa': 'it' is the cat, and where it goes is part of its add (the mask is the
    cat on the sofa); it was a second edit, an add of 'it'. After a removal 'it' is the thing removed, put back or
    elsewhere: 'remove the dog and add it back' added 'it back' (a concept no detector finds), '... put it on the
    table' changed the table's look, where the dog is what appears there; 'back' is no part of a thing ('put the
    vase back' added 'vase back')."""
    assert [(e.edit_type, e.source, e.target) for e in parse_rules(text).edits] == edits


@pytest.mark.parametrize("text,edits", [
    ("the dog and the cat should be removed", [("remove", "dog and cat", None)]),
    ("the dog and the cat should be blue", [("attribute", "dog and cat", "dog and cat")]),
    ("the car, the bus and the bike should be red", [("attribute", "car, bus and bike", "car, bus and bike")]),
    ("the dog and cat should switch places", [("replace", "dog and cat", "cat and dog")]),
    ("the dog should be removed and the cat should be blue", [("remove", "dog", None), ("attribute", "cat", "cat")]),
])
def test_a_compound_subject_is_one_subject(text, edits):
    """'the dog and the cat should be removed': 'and the cat should ...' looked like a new subject with its own
    predicate, so 'the dog' was split off as a clause with none and lost (the parse removed only the cat)."""
    assert [(e.edit_type, e.source, e.target) for e in parse_rules(text).edits] == edits


@pytest.mark.parametrize("text,edits", [
    ("add a cat, a dog", [("add", None, "cat"), ("add", None, "dog")]),
    ("add a cat, a dog, a bird", [("add", None, "cat"), ("add", None, "dog"), ("add", None, "bird")]),
    ("remove the big dog, the small cat", [("remove", "dog", None), ("remove", "cat", None)]),
    ("add a cat, then a dog", [("add", None, "cat"), ("add", None, "dog")]),
    ("remove the car and then the bus", [("remove", "car", None), ("remove", "bus", None)]),
    ("add a red car, a blue bus and a green bike", [("add", None, "red car, blue bus and green bike")]),
    ("make the woman's hair red and her dress blue", [("attribute", "hair", "hair"), ("attribute", "dress", "dress")]),
    ("the sky should be red, not blue", [("attribute", "sky", "sky")]),
    ("make the car red, not blue", [("attribute", "car", "car")]),
])
def test_a_list_without_and_and_a_contrast_with_not(text, edits):
    """'add a cat, a dog' (a list with no 'and') lost the dog: the phrase stops at a comma no 'and' closes; each
    object is now its own edit of that verb. 'the sky should be red, not blue' gave a second edit, an attribute
    edit of 'not'; a clause that starts with 'not' is a contrast, no edit."""
    assert [(e.edit_type, e.source, e.target) for e in parse_rules(text).edits] == edits


@pytest.mark.parametrize("text,edits", [
    ("add a dog and make it run", [("add", None, "dog")]),
    ("replace the cat with a dog and make it jump", [("replace", "cat", "dog")]),
    ("add a bird and have it fly over the lake", [("add", None, "bird")]),
    ("add a dog. make it sit.", [("add", None, "dog")]),
    ("remove the cat and make it snowy", [("remove", "cat", None), ("global", None, None)]),
    ("add a hat and make it look like a crown", [("add", None, "hat")]),
    ("add a box and turn it into a gift", [("add", None, "box")]),
    ("add a hat. Make it a crown.", [("add", None, "hat")]),
    ("replace the cat with a dog and make it look like a wolf", [("replace", "cat", "dog")]),
    ("add a dog and turn it into a painting", [("add", None, "dog"), ("global", None, None)]),
])
def test_what_the_thing_just_added_does_is_no_edit(text, edits):
    """'add a dog and make it run': 'it' is the dog and its pose belongs to its add, as 'make it brown' does; it was a
    second, global edit ('it' read as the whole image), so the prior covered every pixel. So is what it should look
    like: 'add a hat and make it look like a crown' (a style, 'turn it into a painting', is still the picture's)."""
    assert [(e.edit_type, e.source, e.target) for e in parse_rules(text).edits] == edits


@pytest.mark.parametrize("text,pronoun", [("move it here", "it"), ("put them over there", "them"),
                                          ("replace it with a cat", "it")])
def test_a_pronoun_concept_says_it_names_nothing(text, pronoun, capsys):
    """`sigma parse "move it here"` gave a global edit with no word of why; an edit whose concept was only a pronoun
    now keeps its type and says so in `rule`: the detector has nothing to look for, and the reader sees why."""
    assert main(["parse", text]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["edit_type"] != "global" and out["source"] is None
    assert out["rule"].endswith(f"no concept: {pronoun!r} names no object"), out["rule"]
    assert "no concept" not in parse_rules("move the dog here").rule


@pytest.mark.parametrize("text,edit", [
    ("give the dog ( a bone", ("add", None, "bone")),
    ("give the dog (a bone", ("add", None, "bone")),
    ("add a cat (", ("add", None, "cat")),
    ("remove the dog (the brown one)", ("remove", "dog", None)),
])
def test_an_unclosed_parenthesis_is_read_past(text, edit, capsys):
    """`sigma parse "give the dog ( a bone"` ended in a traceback (IndexError, exit 1): the phrase reader skipped an
    unclosed '(' to the end of the text and left its position past the tokens. A stray '(' is read past now."""
    assert main(["parse", text]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["edit_type"], out["source"], out["target"]) == edit
