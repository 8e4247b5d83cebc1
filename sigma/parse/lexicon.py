"""Word lists the rules parser reasons with. Data, not logic: extend a list, not an `if`.

The lists are general English (colours, materials, scene nouns, verbs of editing); none of them
names a sentence of any test set.
"""
from __future__ import annotations


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# ---- determiners, counts, sizes: dropped from concepts (SOURCES.md conventions) -----------------
DETERMINERS = _words("""
a an the this that these those some any one two three four five six seven eight nine ten eleven twelve
several many few more most all every each both another other his her its their my your our whose
single dozen multiple numerous various extra additional
""")
SIZE_WORDS = _words("""
small large giant big tiny huge little enormous massive medium-sized small-sized large-sized gigantic
miniature mini oversized entire whole
""")
# Ordinals say which one of several ("the second car", "the 3rd window"), which a detector cannot use: dropped like
# counts. Not where the ordinal and the next word are one noun ("first aid kit", "second-hand" is one token already).
ORDINALS = _words("""
first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth last penultimate
""")
# Where the ordinal and the next word are one noun: every two-word noun of WordNet 3.0 (index.noun, as Debian's
# wordnet-base 1:3.0-37 ships it; taken once, 2026-12-06) made of one of ORDINALS and a word, less those naming a
# person ("first person", "first lady"): "the second person from the left" picks a person. It was a list of 12 picked
# by hand. Beside it the rule of `ORDINAL_POSITIONS`.
_ORDINAL_COMPOUND_LINES = """
first: aid amendment appearance balcony base baseman blush cause class cousin crusade degree derivative estate floor
    gear half harmonic language lieutenant light mate moment mortgage name offender period principle quarter reading
    rudiment sacker sergeant state step stomach strike team trimester water
second: advent adventism adventist balcony banana base baseman best childhood class coming cousin crusade deck
    empire estate fiddle gear growth half hand joint lieutenant moment mortgage nature period power reading reich
    sacker sight stomach string thought trimester wind
third: base baseman class crusade deck degree dimension estate eye eyelid gear house party power rail reich sacker
    stomach tonsil trimester ventricle world
fourth: crusade deck dimension estate part power stomach ventricle
fifth: amendment avenue column columnist crusade part wheel
sixth: crusade sense
seventh: avenue chord crusade heaven
eighth: note
tenth: part
eleventh: hour
twelfth: day night part
last: day frontier gasp half hurrah judgement judgment laugh mile minute name quarter resort respects rites straw
    supper word
"""


def _ordinal_compounds(text: str) -> frozenset[tuple[str, str]]:
    """('first', 'aid'), ... from 'first: aid amendment ...' (a word ending in ':' starts the next ordinal's words)."""
    pairs, ordinal = set(), ""
    for word in text.split():
        if word.endswith(":"):
            ordinal = word[:-1]
        else:
            pairs.add((ordinal, word))
    return frozenset(pairs)


ORDINAL_COMPOUNDS = _ordinal_compounds(_ORDINAL_COMPOUND_LINES)
# Nouns that are a position in an order themselves (a storey, a rank): the ordinal is what they name ("the second
# floor", "third place"), with any ordinal, where WordNet lists only "first floor"
ORDINAL_POSITIONS = _words("floor floors storey storeys story stories place")
# "a group of people" -> people; "a piece of clothing" -> clothing
QUANTIFIER_NOUNS = _words("""
couple group pair bunch lot lots number few set flock herd pile crowd handful piece pieces bit kind sort
type cluster row swarm school pack bouquet collection series stack bundle heap slice slices chunk chunks
scoop scoops sheet sheets touch hint tinge
""")
# "the colour of the chair" / "the chair's colour" / "the lake surface" -> the owner
ATTRIBUTE_NOUNS = _words("""
color colour colors colours texture textures material materials shade hue tone tint pattern finish
appearance look surface exterior fur hull facade façade wall walls shell skin paint paintwork coat
coating expression pose posture hairstyle gesture stance size height width length
""")
# Attribute nouns that are also things of their own: "a stone wall", "a leather coat" name a wall and a coat
SURFACE_NOUNS = _words("surface exterior fur hull facade façade wall walls shell skin paint paintwork coat coating")
# Adjectives that only qualify an attribute noun: "the man's facial expression" is still about the man
ATTRIBUTE_MODIFIERS = _words("facial overall general main entire whole outer exterior body")
# Attribute nouns of a body: an edit of these is an "action" edit of a person (ImgEdit `action`)
BODY_ATTRIBUTES = _words("expression pose posture gesture stance")
# People: the concept of an action edit is "person" whoever does it (the dataset's convention, and
# the class a detector knows best)
HUMAN_NOUNS = _words("""
person people man men woman women boy boys girl girls child children kid kids baby babies lady ladies
gentleman guy guys player players human humans individual figure he she they him her teenager teen
toddler adult adults worker athlete
""")
DEGRADATION_PHRASES = frozenset({"low light", "poor light", "poor lighting", "bad lighting", "motion blur",
                                 "rain streaks", "jpeg artifacts", "compression artifacts", "low-light"})
# "the entire face of the cube", "the top of the desk" -> the owner (a part that is the owner's surface)
PART_OF_NOUNS = _words("face side sides top front back body outside content contents")
# Scene wording that names the background rather than an object
BACKGROUND_WORDS = _words("""
background backdrop setting settings environment environments scenery surroundings surrounding
landscape backgrounds
""")
GENERIC_SCENE_TAILS = _words("environment setting scenery backdrop background surroundings landscape scene")
SCENES = _words("""
beach beachside seaside coast coastline shore ocean sea underwater forest woods woodland jungle
rainforest desert dunes mountain mountains mountainside hill hills valley field fields meadow grassland
prairie savanna savannah park countryside farm farmland city cityscape skyline street streets town
village downtown space galaxy glacier arctic antarctica tundra lake river waterfall canyon cave
volcano island studio room office kitchen library classroom stadium palace temple ruins cafe
restaurant bedroom garage backyard yard lawn swamp marsh cliff cliffs harbor harbour port airport
station market square alley highway stage wilderness world planet universe lawn grass snowfield
savanna orchard vineyard garden gardens plain plains courtyard plaza suburb suburbs metropolis
wonderland fairyland underworld heaven moon mars
""")
WHOLE_IMAGE = _words("""
image images photo photos photograph picture pictures pic it this everything scene whole overall shot
view season weather time lighting atmosphere mood ambience ambiance palette
""")
# Degradations whose removal is a whole-image restoration (I2EBench low-level tasks)
DEGRADATIONS = _words("""
blur blurriness blurry blurring haze haziness hazy noise noisiness noisy rain raindrops rainstreaks
grain graininess artifacts artefacts fog fogginess mist darkness glare jpeg compression scratches
distortion distortions motion-blur low-light lowlight streaks
""")
RESTORATION_VERBS = _words("""
deblur denoise dehaze derain restore enhance sharpen brighten darken colorize colourize lighten
upscale clarify unblur declutter
blur blurs pixelate pixelates shrink shrinks enlarge enlarges magnify magnifies resize resizes
whiten whitens smooth smooths smoothen smoothens soften softens tidy tidies redden reddens
""")
# ('blur the license plate', 'pixelate the face', 'shrink the car', 'whiten the teeth': the object's look, as
# 'sharpen the dog' is; they were global edits from the keyword 'blur', or default adds of the verb)
GLOBAL_ADJUSTMENTS = _words("""
brightness contrast saturation exposure lighting illumination quality sharpness clarity resolution
vibrance temperature white-balance gamma hue tone tones colors colours color colour
""")
WEATHER = _words("""
snow snowy snowing snowfall rain rainy raining fog foggy mist misty sunny cloudy stormy storm thunderstorm
winter wintry summer autumn autumnal fall spring night nighttime night-time daytime day dusk dawn sunset
sunrise evening morning twilight midnight noon overcast hazy frosty icy
""")
# Light as a mass noun: 'let there be light' changes the lighting of the whole image
LIGHT_WORDS = _words("light daylight moonlight sunlight sunshine lighting illumination")
# Weather that settles on a surface: "snow on the mountains" lies on them, a local add even on a scene noun (where
# "rain in the city", "fog over the valley" are the scene's weather)
SETTLING_WEATHER = _words("snow snowfall hail frost")
WEATHER_NOUNS = _words("snow rain fog mist snowfall rainfall sunshine sunlight storm thunderstorm hail")
STYLE_WORDS = _words("""
style styles painting paintings sketch sketches drawing drawings watercolor watercolour watercolors
cartoon cartoonish anime manga pixel pixelated impressionist impressionism cubist cubism expressionist
ghibli cyberpunk steampunk vintage retro sepia grayscale greyscale monochrome noir comic comics pop-art
mosaic pencil charcoal ink oil oil-painting renaissance baroque surreal surrealist abstract ukiyo-e
claymation lego low-poly 3d art artwork illustration engraving blueprint stained-glass woodcut etching
pastel graffiti poster sculpture van gogh monet picasso rembrandt vermeer dali disney pixar
photorealistic realistic filter
""")
COLOURS = _words("""
red orange yellow green blue purple pink brown black white gray grey silver gold golden beige violet
indigo cyan magenta teal turquoise navy maroon crimson scarlet lavender lilac olive tan cream ivory
amber bronze copper khaki coral mint peach burgundy emerald ruby sapphire rainbow multicolored
multicoloured colorful colourful transparent translucent blonde blond brunette ginger auburn platinum
""")
# Colours that are things too: "turn the apple into an orange" is a fruit (it was the apple's colour), "into orange"
# the colour
COLOUR_NOUNS = _words("orange peach olive lime lemon rose plum cherry coral ruby emerald sapphire diamond salmon")
COLOUR_MODIFIERS = _words("""
dark light bright pale deep pastel neon vivid dull soft rich warm cool darker lighter brighter deeper
paler vibrant muted hot royal
""")
MATERIALS = _words("""
wooden wood metal metallic steel iron glass plastic stone marble brick concrete leather fabric cotton
silk wool woolen woollen velvet denim paper ceramic porcelain crystal rubber chrome clay knitted woven
furry fluffy golden silvery glossy matte matt satin lace linen granite jade diamond
chocolate cardboard bamboo wicker copper bronze brass wax sandstone tin aluminum aluminium titanium
""")
STATE_ADJECTIVES = _words("""
electric smooth rough shiny polished rusty old new worn broken cracked dirty clean wet dry frozen burning melting
glowing sparkly sparkling striped spotted dotted checkered plaid floral hairy bald happy sad angry
smiling surprised open closed lit empty full ripe rotten withered blooming young fat thin tall long
curly straight wavy short-haired long-haired bearded shaved muddy dusty snowy icy bloody fresh wilted
sleepy awake crying laughing asleep damaged pristine faded tattered torn dented scratched shattered
bigger smaller larger taller shorter longer wider narrower thinner fatter thicker older younger happier
sadder cleaner dirtier newer heavier lighter darker brighter deeper redder greener bluer whiter blacker
round square oval triangular flat sharp dull soft hard bent twisted upside-down inverted mirrored
elderly aged youthful ancient modern futuristic antique luminous illuminated clear clearer sharper crisp
crisper warmer cooler colder hotter sunnier blurrier bare leafless hollow calm fluffy
""")
# Adjectives of a thing's look or character, values as the states above are: "make the dress flowing and elegant" is
# the dress's look (its concept was 'dress flowing and elegant'), "make the house look spooky" too (a replace of the
# house by 'spooky'). Only adjectives that name no object a detector could be asked for.
LOOK_ADJECTIVES = _words("""
ugly beautiful pretty elegant flowing flowy cute adorable scary creepy spooky eerie haunted cozy cosy comfortable
luxurious fancy plain shabby messy tidy neat cluttered gorgeous handsome stunning cheerful gloomy dreary festive
vibrant invisible opaque fuzzy blurry wrinkled muscular skinny chubby slim slender delicious tasty juicy healthy
sick tired excited scared frightened shocked worried serious funny silly goofy friendly fierce menacing majestic
magical mystical mysterious dramatic romantic peaceful serene tranquil chaotic lively crowded deserted abandoned
ruined overgrown lush dense sparse feathered spiky bumpy glittery glittering shimmering gleaming weathered mossy
sandy rocky grassy leafy colorless colourless intricate ornate decorated detailed stylish trendy fashionable
casual formal sporty rugged classy sleek elaborate glamorous cheap expensive rich poor shiny sparkly sturdy
fragile delicate elderly puffy swollen fluffier sexy lovely charming gentle mean evil angelic royal rustic
cartoony realistic strong weak intense subtle faint harsh good nice better nicer best worse
""")
# What one is dressed in: "make the man in a suit" puts a suit on him (it replaced the background by 'suit')
GARMENTS = _words("""
suit suits tuxedo dress dresses gown shirt t-shirt tshirt jacket coat sweater hoodie uniform costume hat cap helmet
scarf jeans pants trousers shorts skirt kimono robe bikini swimsuit armor armour outfit clothes clothing apron vest
cape cloak mask boots shoes sneakers gloves pajamas pyjamas raincoat overalls sari
""")
# Judgements of how a thing looks now: "the car is ugly" names no edit (it was a replace of the car by 'ugly')
JUDGEMENT_ADJECTIVES = _words("""
ugly boring bad terrible awful horrible hideous weird strange odd wrong fine good nice great perfect beautiful
pretty ok okay cool lovely amazing gross meh dull bland wonderful fantastic awesome stupid silly off
""")
ATTRIBUTE_VALUE_NOUNS = _words("""
color colour shade tone hue finish texture pattern material look style appearance version tan
""")
# -ing / -ed words that are nouns or adjectives of a concept, not a participle clause ("the building")
ING_NOUNS = _words("""
building buildings painting paintings ring rings king kings wing wings string strings clothing ceiling
ceilings pudding swing swings sling earring earrings icing wedding evening morning railing railings
awning bedding stuffing frosting lighting sibling siblings duckling ducklings seedling sapling spring
thing things sling viking vikings dumpling dumplings stocking stockings drawing drawings carving
carvings wedding ring
sing wing topping toppings railing shilling herring pudding
""")
ED_KEEP = _words("red bed shed sled seed weed reed bed bobsled steed feed")

# ---- verbs ------------------------------------------------------------------------------------
ADD_VERBS = _words("""
add adds adding added put puts putting place places placing placed insert inserts inserting inserted
include includes including draw draws drawing attach attaches attaching introduce introduces
introducing plant plants planting hang hangs hanging stick paste position positions create creates
creating generate generates spawn append drop bring show write writes print prints engrave
""")
WRITE_VERBS = _words("write writes print prints engrave")
REMOVE_VERBS = _words("""
remove removes removing removed delete deletes deleting deleted erase erases erasing erased
eliminate eliminates eliminating eliminated clear clears clearing omit omits exclude excludes hide
hides ditch discard discards lose
""")
REPLACE_VERBS = _words("""
replace replaces replacing replaced swap swaps swapping swapped substitute substitutes substituting
exchange exchanges exchanging switch switches switching trade trades
""")
CHANGE_VERBS = _words("""
change changes changing changed turn turns turning transform transforms transforming convert converts
converting modify modifies alter alters adjust adjusts set edit edits update updates render renders
transfer transfers reimagine recreate redraw stylize stylise morph morphs
""")
# Verbs that change the framing of the whole picture ("zoom in on the cat", "crop the image to the dog"): global, as
# every pixel moves; "crop out X" still removes X. Orientation verbs turn the picture, or a named thing ("flip the cat")
FRAMING_VERBS = _words("zoom zooms zooming crop crops cropping")
ORIENTATION_VERBS = _words("flip flips rotate rotates")
# What only people do (expressions, gestures): "make them smile" is about people, so `person`, whoever "them" is
HUMAN_ACTIONS = _words("""
smile smiles smiling laugh laughs laughing cry cries crying frown frowns wink winks blink grin grins pout wave
waves waving clap claps clapping dance dances dancing sing sings singing shout yell scream cheer cheers hug hugs
kiss kisses nod nods kneel kneels salute pray pose poses
""")
MAKE_VERBS = _words("make makes let have get")
PAINT_VERBS = _words("""
paint paints painting repaint recolor recolour color colour dye dyes tint tints tinge shade stain
""")
GIVE_VERBS = _words("give gives giving")
# with the past forms: "what if the horse had wings", "the man wore a hat" (the subject swallowed them: "man wore")
WEAR_VERBS = _words("""
wear wears wearing wore worn hold holds holding held carry carries carrying carried have has having had put
""")
BE_VERBS = _words("be is are was were become becomes became look looks appear appears seem seems")
# Head nouns that name a look, not a thing: 'into a cartoon version' is a style, 'into a vintage bicycle' a new thing
STYLE_HEADS = _words("version effect filter aesthetic vibe feel theme rendition render design rendering finish tone")
# Where in the frame ('in the background', 'on the left'): a place, not the outcome of an edit
LOCATION_WORDS = _words("""
foreground background middle center centre corner front back left right top bottom side edge distance
""")
# Prepositions that place a new thing ('have a cat in the window'): after 'have/let a X' the X is added
PLACE_PREPOSITIONS = _words("on in at near beside behind under over above below next inside atop by")
# Verbs of what a thing displays ('the clock should show 3 o'clock', 'the sign should say SALE'): its look changes
DISPLAY_VERBS = _words("show shows display displays read reads say says")
# Words after which a concept phrase ends: prepositions, relative words, conjunctions of clauses
BOUNDARY_WORDS = _words("""
in on at near to from with by beside behind under underneath over above below into onto inside outside
along across around between towards toward next within against through throughout among beneath atop
upon off for so that which who where while whose as than like instead via leaving ensuring making
keeping but then until when if because is are was were be should would could will must has have
had looks look appears appear seems seem becomes become being there here except excluding without
please pls plz thanks thx ontop
""")
# Verbs that end a noun phrase after "make the man ..." / "have the dog ..." (actions, poses)
ACTION_VERBS = _words("""
turn raise smile look sit stand jump wave hold wear carry run walk dance laugh cry lie open close face
point lift bend kneel eat drink sleep fly swim ride play read write cross fold hug kiss shake nod frown
wink bow lean stretch reach clap throw catch kick climb squat crouch grab take rest lower tilt rotate
spin hug sing shout yell scream blink gaze stare glance move step roll crawl fall float hover sink
bark meow roar perch flap spread drive pose appear become grow shrink melt burn glow shine age wilt
bloom have has get
gallop trot hop leap dive surf skate ski jog sprint skip yawn howl chase graze peek smirk grin pout salute cheer
sail drift soar glide flutter wag sniff splash paddle reflect collapse crumble explode shatter rise go
""")
SCENE_PREPOSITIONS = _words("in at on into")

# ---- several edits in one instruction ----------------------------------------------------------
# Words between two clauses that carry no edit ("..., and then also add ...")
CLAUSE_CONNECTORS = _words(", ; and then also please just finally lastly afterwards additionally plus kindly")
# Editing verbs that are also common nouns ("a plant", "the light switch"): after "and"/"," they
# start a new clause only when an object follows ("and plant some flowers", "and turn the lights off")
NOUNY_VERBS = _words("""
plant plants drop set place places show stick paste paint color colour shade stain tint dye switch trade
exchange turn change fix update edit hide lower raise clear correct trade swap spawn position open close
shut crop flip cover coat blanket sprinkle drape blur
""")
# "cover X with Y": Y is put on X, as in "add Y to X" ("cover the mountains with snow" is "add snow to the mountains")
COVER_VERBS = _words("cover covers coat coats blanket blankets sprinkle sprinkles drape drapes decorate decorates")
# What may follow such a verb for it to read as a verb: an object start or a particle
OBJECT_STARTS = _words("""
a an the this that these those some any his her its their my your our it them him me all every each
both another one two three four five six seven eight nine ten several many few more
on off out away up down rid over
""")
# Clauses that state a constraint, not an edit ("and make sure it looks natural", "keep the rest")
CONSTRAINT_STARTS = _words("""
keep keeping leave leaving maintain maintaining preserve preserving ensure ensuring avoid avoiding
don't dont without retain retaining fill filling match matching
""")
# Verbs of a state change of the object itself ("open the curtains"): attribute edits
STATE_VERBS = _words("open opens close closes shut shuts")
# Verbs that move a thing within the picture ("move the dog to the left"): the same thing in both images, another place
MOVE_VERBS = _words("move moves relocate relocates reposition repositions")
# A clause (after the first) mentioning these is about how the result should look, not another edit
QUALITY_WORDS = _words("""
natural naturally realistic realistically seamless seamlessly unchanged intact untouched consistent
coherent believable blend blends blended blending unaltered original same identical
""")
MODALS = _words("should must would could will can shall might")
# Auxiliaries before a passive participle ('is being removed', 'has been added', 'gets replaced'), and the
# participles that say which edit the passive asks for
PASSIVE_AUXILIARIES = _words("be is are am was were been being get gets got getting")
ADDED_PARTICIPLES = _words("added inserted placed put included introduced attached drawn")
# Verbs that trade two things' places: "swap the dog and the cat", "the dog and the cat switched places". Each
# shows up where the other was, so both are the source and, in the other order, the target
SWAP_VERBS = _words("""
swap swaps swapping swapped switch switches switching switched exchange exchanges exchanging exchanged
trade trades trading traded
""")
SWAP_PLACE_NOUNS = _words("positions position places place spots spot locations location sides")
REPLACED_PARTICIPLES = _words("replaced swapped substituted exchanged")
# Nouns ending in -ly (other -ly words after "and"/"," are adverbs: ", slightly to the right")
LY_NOUNS = _words("""
lily lilies fly butterfly dragonfly firefly housefly belly jelly family ally holly rally assembly bully
anomaly gully trolley pulley valley volley alley
""")
# Adjectives in -ly, which a noun phrase keeps ('the friendly dog', 'the lonely tree'); any other -ly word after a
# noun is an adverb that ends the phrase (phrases.is_adverb)
LY_ADJECTIVES = _words("""
ugly curly hilly woolly wooly silly lovely friendly lonely holy jolly chilly frilly bubbly wobbly elderly early
daily weekly monthly yearly nightly hourly only costly deadly lively cuddly prickly wrinkly sparkly bristly burly
grisly lowly homely manly knobbly crinkly portly stately ghastly ghostly pearly scaly smelly oily comely kindly
sickly bully italy supply reply monopoly apply
""")
# After a subject these start a predicate: "the cat | should be removed", "the sky | is purple"
PASSIVE_MARKERS = _words("removed deleted erased gone eliminated missing replaced swapped added")
# After an object these introduce its own outcome or place: "replace the dog | with a cat",
# "add a ship | on the sea", "the colour of the car | to blue"
COMPLEMENT_PREPS = _words("""
with by for to into as on onto in at near under underneath above below beside behind inside over
across along next atop upon from around
""")

# ---- the sky and text: edits with conventions of their own --------------------------------------
# "change the sky to a sunset" replaces the sky with a scene (source = the sky, target = the scene);
# "make the sky stormy" (an adjective) stays an attribute of the sky
SKY_WORDS = _words("sky skies")
SKY_SCENES = _words("""
sunset sunsets sunrise sunrises night nighttime night-time dusk dawn twilight evening midnight storm
thunderstorm aurora aurorae auroras daybreak nightfall
""")
# Nouns that name written text; an ALL-CAPS word after them is the text itself ("the text OPEN")
TEXT_NOUNS = _words("""
text word words writing letters lettering caption title label slogan inscription message headline
phrase sign-text
""")
