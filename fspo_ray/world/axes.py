"""The preference axes of the simulated world and the words that express them.

Each axis value has four response fragments (short phrases a response uses to reveal the
value) and three description sentences (how a user description states the preference),
plus a noun phrase for refinement ("They also prefer ..."). Fragments of different values
never share a full phrase, so a reader can map any text back to axis values.
"""

from __future__ import annotations

# Axis -> its values, in a fixed order (this order is used everywhere: views, personas).
AXES: dict[str, tuple[str, ...]] = {
    "length": ("concise", "detailed"),
    "tone": ("formal", "casual", "playful"),
    "format": ("bullets", "prose", "steps"),
    "medium": ("videos", "books", "hands-on"),
    "budget": ("frugal", "lavish"),
    "diet": ("vegetarian", "omnivore"),
    "expertise": ("child", "teen", "expert"),
    "sentiment": ("positive", "negative", "mixed"),
    "pace": ("slow", "fast"),
    "locale": ("city", "countryside"),
    "humor": ("witty", "earnest"),
    "social": ("solo", "group"),
}
AXIS_NAMES: tuple[str, ...] = tuple(AXES)

# (axis, value) -> four paraphrase fragments. Generators draw different subsets of these.
FRAGMENTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("length", "concise"): ("in short", "briefly put", "to keep it brief", "the short version"),
    ("length", "detailed"): (
        "in more detail",
        "to go a bit deeper",
        "looking at every detail",
        "with the full picture",
    ),
    ("tone", "formal"): (
        "it is advisable",
        "with due respect",
        "I respectfully suggest",
        "kindly consider this",
    ),
    ("tone", "casual"): ("no big deal", "just chill", "hey so", "no stress at all"),
    ("tone", "playful"): (
        "what a fun ride",
        "let the games begin",
        "woo hoo",
        "a silly little twist",
    ),
    ("format", "bullets"): (
        "key points first",
        "in a quick list",
        "point by point",
        "bullet by bullet",
    ),
    ("format", "prose"): (
        "in flowing prose",
        "as one paragraph",
        "in plain sentences",
        "as a smooth narrative",
    ),
    ("format", "steps"): (
        "step by step",
        "one step at a time",
        "follow the steps in order",
        "first step then the next",
    ),
    ("medium", "videos"): (
        "watch a short video",
        "find a tutorial clip",
        "see it on video",
        "a video guide helps",
    ),
    ("medium", "books"): (
        "read a good book",
        "a classic book covers it",
        "read an article first",
        "check the library shelf",
    ),
    ("medium", "hands-on"): (
        "try it yourself",
        "learn by doing",
        "get your hands dirty",
        "practice with a kit",
    ),
    ("budget", "frugal"): (
        "keep the costs low",
        "spend as little as you can",
        "stick to free options",
        "save your money",
    ),
    ("budget", "lavish"): (
        "treat yourself to the best",
        "spare no expense",
        "go for the premium option",
        "splurge a little",
    ),
    ("diet", "vegetarian"): (
        "a veggie meal",
        "plant based snacks",
        "skip the meat",
        "some lentil soup",
    ),
    ("diet", "omnivore"): (
        "grilled chicken",
        "a steak dinner",
        "some fish tacos",
        "bacon and eggs",
    ),
    ("expertise", "child"): (
        "imagine it like a toy",
        "in simple little words",
        "like a game at recess",
        "think of a puppy",
    ),
    ("expertise", "teen"): (
        "like you learned in class",
        "as in high school science",
        "like a science fair project",
        "as your teacher might say",
    ),
    ("expertise", "expert"): (
        "in technical terms",
        "from first principles",
        "for the specialist",
        "the precise mechanism is",
    ),
    ("sentiment", "positive"): (
        "I loved it",
        "really worth it",
        "a great pick",
        "highly recommend it",
    ),
    ("sentiment", "negative"): (
        "a real letdown",
        "I was disappointed",
        "would not buy again",
        "skip this one",
    ),
    ("sentiment", "mixed"): (
        "a mixed bag",
        "some ups and downs",
        "hit and miss",
        "good and bad parts",
    ),
    ("pace", "slow"): (
        "take your time",
        "at a relaxed pace",
        "no need to rush",
        "slowly and calmly",
    ),
    ("pace", "fast"): ("do it quickly", "at full speed", "move fast", "get it done fast"),
    ("locale", "city"): ("in the city", "downtown", "near the subway", "around town"),
    ("locale", "countryside"): (
        "out in the country",
        "on a quiet farm",
        "near the open fields",
        "in a small village",
    ),
    ("humor", "witty"): ("pun intended", "just kidding", "ha ha", "and that is the punchline"),
    ("humor", "earnest"): ("in all honesty", "sincerely", "speaking plainly", "with real care"),
    ("social", "solo"): ("on your own", "by yourself", "in quiet solitude", "as a solo outing"),
    ("social", "group"): ("with friends", "bring the family", "as a team", "with a big group"),
}

# (axis, value) -> sentences for a user description. Each names the value's keyword (the
# value itself), so a description can be read back by keyword (see reader.read_description).
DESCRIPTION_SENTENCES: dict[tuple[str, str], tuple[str, ...]] = {
    ("length", "concise"): (
        "They like concise answers.",
        "Keep replies concise for them.",
        "They prefer concise, to the point replies.",
    ),
    ("length", "detailed"): (
        "They like detailed answers.",
        "They want detailed explanations.",
        "Give them detailed replies.",
    ),
    ("tone", "formal"): (
        "They prefer a formal tone.",
        "They respond well to formal language.",
        "Speak to them in a formal way.",
    ),
    ("tone", "casual"): (
        "They prefer a casual tone.",
        "They like casual, relaxed chat.",
        "Keep it casual with them.",
    ),
    ("tone", "playful"): (
        "They enjoy a playful tone.",
        "They like playful banter.",
        "Be playful with them.",
    ),
    ("format", "bullets"): (
        "They like answers in bullets.",
        "Bullets work best for them.",
        "They scan bullets rather than paragraphs.",
    ),
    ("format", "prose"): (
        "They like answers written as prose.",
        "They prefer prose over lists.",
        "Plain prose suits them.",
    ),
    ("format", "steps"): (
        "They like answers broken into steps.",
        "They follow numbered steps best.",
        "Give them clear steps.",
    ),
    ("medium", "videos"): (
        "They learn best from videos.",
        "They like to watch videos.",
        "Videos work well for them.",
    ),
    ("medium", "books"): (
        "They learn best from books.",
        "They love reading books.",
        "They enjoy books and articles.",
    ),
    ("medium", "hands-on"): (
        "They learn best hands-on.",
        "They like hands-on practice.",
        "A hands-on approach suits them.",
    ),
    ("budget", "frugal"): (
        "They are frugal with money.",
        "They keep a frugal budget.",
        "Frugal options suit them.",
    ),
    ("budget", "lavish"): (
        "They like lavish choices.",
        "They have a lavish budget.",
        "They enjoy lavish treats.",
    ),
    ("diet", "vegetarian"): (
        "They are vegetarian.",
        "They eat a vegetarian diet.",
        "They stick to vegetarian food.",
    ),
    ("diet", "omnivore"): (
        "They are an omnivore.",
        "They eat like an omnivore, meat included.",
        "As an omnivore they enjoy meat and fish.",
    ),
    ("expertise", "child"): (
        "They are a child.",
        "Explain things to them as to a child.",
        "They are a curious young child.",
    ),
    ("expertise", "teen"): (
        "They are a teen.",
        "They are a teen in high school.",
        "Explain things at a teen level.",
    ),
    ("expertise", "expert"): (
        "They are an expert.",
        "They are an expert in the field.",
        "They want expert depth.",
    ),
    ("sentiment", "positive"): (
        "They want positive reviews.",
        "They enjoy a positive outlook.",
        "They like to hear the positive side.",
    ),
    ("sentiment", "negative"): (
        "They value negative, critical takes.",
        "They want the negative side spelled out.",
        "They trust negative reviews most.",
    ),
    ("sentiment", "mixed"): (
        "They like mixed, balanced verdicts.",
        "They want mixed views with pros and cons.",
        "A mixed verdict convinces them.",
    ),
    ("pace", "slow"): (
        "They like a slow pace.",
        "They take things slow.",
        "A slow, relaxed pace suits them.",
    ),
    ("pace", "fast"): (
        "They like a fast pace.",
        "They want a fast rhythm.",
        "Fast, quick plans suit them.",
    ),
    ("locale", "city"): (
        "They are based in a big city.",
        "They are a city person.",
        "City life suits them.",
    ),
    ("locale", "countryside"): (
        "They live in the countryside.",
        "They love the countryside.",
        "The countryside suits them.",
    ),
    ("humor", "witty"): (
        "They love a witty joke.",
        "They enjoy witty replies.",
        "A witty touch makes them smile.",
    ),
    ("humor", "earnest"): (
        "They prefer an earnest manner.",
        "They like earnest, sincere replies.",
        "Keep it earnest with them.",
    ),
    ("social", "solo"): (
        "They like to do things solo.",
        "They prefer solo activities.",
        "They enjoy solo time.",
    ),
    ("social", "group"): (
        "They like group activities.",
        "They enjoy time with a group.",
        "Group plans suit them.",
    ),
}

# (axis, value) -> noun phrase for a refinement sentence: f"They also prefer {phrase}."
ALSO_PHRASES: dict[tuple[str, str], str] = {
    ("length", "concise"): "concise answers",
    ("length", "detailed"): "detailed answers",
    ("tone", "formal"): "a formal tone",
    ("tone", "casual"): "a casual tone",
    ("tone", "playful"): "a playful tone",
    ("format", "bullets"): "answers in bullets",
    ("format", "prose"): "answers in prose",
    ("format", "steps"): "answers in clear steps",
    ("medium", "videos"): "learning from videos",
    ("medium", "books"): "learning from books",
    ("medium", "hands-on"): "hands-on learning",
    ("budget", "frugal"): "frugal options",
    ("budget", "lavish"): "lavish options",
    ("diet", "vegetarian"): "vegetarian food",
    ("diet", "omnivore"): "an omnivore diet",
    ("expertise", "child"): "explanations for a child",
    ("expertise", "teen"): "explanations for a teen",
    ("expertise", "expert"): "explanations for an expert",
    ("sentiment", "positive"): "a positive outlook",
    ("sentiment", "negative"): "a negative, critical take",
    ("sentiment", "mixed"): "a mixed verdict",
    ("pace", "slow"): "a slow pace",
    ("pace", "fast"): "a fast pace",
    ("locale", "city"): "city options",
    ("locale", "countryside"): "countryside options",
    ("humor", "witty"): "a witty touch",
    ("humor", "earnest"): "an earnest manner",
    ("social", "solo"): "solo activities",
    ("social", "group"): "group activities",
}


def axis_values() -> list[tuple[str, str]]:
    """Every (axis, value) pair in axis order."""
    return [(axis, value) for axis, values in AXES.items() for value in values]
