"""Questions in many words: the compositional phrasings of corpus v2.


A reader does not type "What is the capital of Kenya?" the way a template does. They
write "hi! what's the capital city of kenya", "Quick question: Kenya's capital is which
city? Thanks!", or make a typo. Corpus v2 builds each question from three parts:

    lead-in + core question + tail,  e.g. "Hello. " + "Capital of {country}?" + " Thanks!"

then applies surface variants (lower case, no question mark, contractions, a typo). The
*cores* of each task are split: most are used in SFT, the last ``N_HELDOUT_CORES`` are
never seen in training, so the held-out phrasing split measures generalisation to new
wording, not only to a new greeting. Taught in ``00_welcome``.
"""

from __future__ import annotations

import random

#: how many of each task's cores (the last ones of its list) are held out of SFT
N_HELDOUT_CORES = 3

LEADS = [
    "", "", "", "Hi! ", "Hello. ", "Quick question: ", "Please tell me: ", "I have a question. ",
    "I'm studying geography. ", "Could you help me? ", "Hey, ", "Here is a question for you. ",
    "Sorry to bother you, but ", "Excuse me, ",
]

TAILS = ["", "", "", " Thanks!", " Thank you.", " Please answer briefly.", " I'm curious.",
         " Just the answer, please."]

#: task -> core questions. The last N_HELDOUT_CORES of each list are never used in SFT.
CORES: dict[str, list[str]] = {
    "capital": [
        "What is the capital of {country}?",
        "Which city is the capital of {country}?",
        "What is {country}'s capital?",
        "Name the capital city of {country}.",
        "Tell me the capital of {country}.",
        "Do you know the capital of {country}?",
        "What city is the capital of {country}?",
        "Which city serves as the capital of {country}?",
        "The capital of {country} is which city?",
        "Capital of {country}?",
        "What is the name of the capital of {country}?",
        "Can you tell me what the capital of {country} is?",
        # held out
        "Where is the seat of government of {country}? Name the city.",
        "I need the capital city of {country}.",
        "Which city would you call the capital of {country}?",
    ],
    "continent": [
        "Which continent is {country} in?",
        "On which continent is {country}?",
        "Name the continent where {country} is.",
        "Tell me which continent {country} is on.",
        "What continent is {country} part of?",
        "Where is {country}? Name the continent.",
        "{country} lies on which continent?",
        "Do you know which continent {country} is in?",
        "What continent is {country} in?",
        "In which continent can you find {country}?",
        "Continent of {country}?",
        "Which part of the world is {country} in, by continent?",
        # held out
        "Can you tell me the continent that {country} belongs to?",
        "Is {country} in Europe, Asia, Africa, the Americas or Oceania?",
        "{country} is located on what continent?",
    ],
    "language": [
        "What language is spoken in {country}?",
        "Which language do people speak in {country}?",
        "What is the main language of {country}?",
        "Tell me the language of {country}.",
        "What language do people in {country} speak?",
        "What do people in {country} mostly speak?",
        "Which language is most widely spoken in {country}?",
        "Do you know what language they speak in {country}?",
        "Main language of {country}?",
        "What is the language of {country}?",
        "In {country}, which language do most people speak?",
        "Name the main language spoken in {country}.",
        # held out
        "If I travel to {country}, what language will I hear most?",
        "Can you tell me the most common language in {country}?",
        "What's the dominant language of {country}?",
    ],
    "country_of_capital": [
        "{capital} is the capital of which country?",
        "Which country has {capital} as its capital?",
        "Of which country is {capital} the capital?",
        "Tell me which country has the capital {capital}.",
        "{capital} is the capital city of which country?",
        "Which country is {capital} the capital of?",
        "Do you know which country has its capital in {capital}?",
        "Name the country whose capital is {capital}.",
        "{capital} is the capital of what country?",
        "What country has {capital} as its capital city?",
        "Which nation's capital is {capital}?",
        "Whose capital is {capital}?",
        # held out
        "Can you tell me which country {capital} is the capital of?",
        "The city of {capital} is the capital of which country?",
        "If {capital} is a capital, which country is it the capital of?",
    ],
    "legs": [
        "How many legs does a {animal} have?",
        "How many legs has a {animal} got?",
        "Tell me how many legs a {animal} has.",
        "What is the number of legs of a {animal}?",
        "Count the legs of a {animal}.",
        # held out
        "A {animal} walks on how many legs?",
        "Do you know how many legs a {animal} has?",
        "Number of legs of a {animal}?",
    ],
    "sound": [
        "What sound does a {animal} make?",
        "What noise does a {animal} make?",
        "Tell me the sound a {animal} makes.",
        "Which sound does a {animal} make?",
        "What does a {animal} say?",
        # held out
        "How does a {animal} sound?",
        "Do you know what sound a {animal} makes?",
        "What sound comes from a {animal}?",
    ],
    "colour": [
        "What colour is {thing}?",
        "What is the colour of {thing}?",
        "Tell me the colour of {thing}.",
        "Which colour is {thing}?",
        "What color is {thing}?",
        # held out
        "Do you know what colour {thing} is?",
        "Name the colour of {thing}.",
        "What color do you see when you look at {thing}?",
    ],
    "describe": [
        "Tell me about {country}.",
        "Describe {country}.",
        "Give me some facts about {country}.",
        "What can you tell me about {country}?",
        "Write a short description of {country}.",
        # held out
        "What do you know about {country}?",
        "Describe the country {country} for me.",
        "Facts about {country}, please.",
    ],
}

#: open-ended tasks (many right answers): task -> cores; all cores are used in training
OPEN_CORES: dict[str, list[str]] = {
    "pair_capital": [
        "Name a country in {continent} and its capital.",
        "Give me a country in {continent} and its capital city.",
        "Tell me one country in {continent} together with its capital.",
        "Pick a country in {continent} and tell me its capital.",
    ],
    "pair_sound": [
        "Give an animal and the sound it makes.",
        "Name an animal and the sound it makes.",
        "Tell me an animal and what sound it makes.",
        "Pick an animal and tell me the noise it makes.",
    ],
    "two_countries": [
        "Name two countries where {language} is spoken.",
        "Give me two countries where people speak {language}.",
        "Tell me two countries whose main language is {language}.",
        "Which two countries speak {language}? Name any two.",
    ],
}

_CONTRACTIONS = [("What is", "What's"), ("what is", "what's"), ("I am", "I'm"),
                 ("do not", "don't"), ("Which city is", "Which city's"), ("It is", "It's")]


def train_cores(task: str) -> list[str]:
    """The cores SFT may use for ``task``."""
    return CORES[task][:-N_HELDOUT_CORES]


def heldout_cores(task: str) -> list[str]:
    """The cores SFT never uses for ``task`` (the held-out phrasing split)."""
    return CORES[task][-N_HELDOUT_CORES:]


def _protected_spans(text: str, protect: tuple[str, ...]) -> list[tuple[int, int]]:
    spans = []
    for word in protect:
        start = text.find(word)
        while word and start >= 0:
            spans.append((start, start + len(word)))
            start = text.find(word, start + 1)
    return spans


def add_typo(text: str, rng: random.Random, protect: tuple[str, ...] = ()) -> str:
    """Swap two neighbouring letters inside one word of at least five letters that is not
    part of ``protect`` (entity names stay intact: the question must remain answerable)."""
    spans = _protected_spans(text, protect)
    words, pos = [], 0
    for w in text.split(" "):
        if len(w) >= 5 and w.isalpha() and not any(a < pos + len(w) and pos < b
                                                   for a, b in spans):
            words.append((pos, w))
        pos += len(w) + 1
    if not words:
        return text
    start, w = rng.choice(words)
    i = rng.randrange(1, len(w) - 2)  # keep the first letter: "capital" -> "captial"
    w2 = w[:i] + w[i + 1] + w[i] + w[i + 2:]
    return text[:start] + w2 + text[start + len(w):]


def vary(text: str, rng: random.Random, protect: tuple[str, ...] = ()) -> str:
    """Surface variants a reader types: contractions, a typo (rare), no final question mark
    or full stop, lower case (entity names keep their capitals)."""
    if rng.random() < 0.3:
        for a, b in _CONTRACTIONS:
            if a in text:
                text = text.replace(a, b, 1)
                break
    if rng.random() < 0.08:
        text = add_typo(text, rng, protect)
    if rng.random() < 0.2 and text[-1] in "?.":
        text = text[:-1]
    if rng.random() < 0.15:
        text = lower_except(text, protect)
    return text


def lower_except(text: str, protect: tuple[str, ...] = ()) -> str:
    """``text`` in lower case, except the names in ``protect`` (a reader who types
    "what is the capital of Kenya" in lower case still names the country; the tiny
    tokenizer splits "kenya" into pieces the model never saw in pretraining)."""
    spans = sorted(_protected_spans(text, protect))
    out, pos = [], 0
    for a, b in spans:
        if a < pos:
            continue
        out += [text[pos:a].lower(), text[a:b]]
        pos = b
    return "".join(out) + text[pos:].lower()


def compose(core: str, fields: dict, rng: random.Random, plain: bool = False) -> str:
    """One question: a lead-in, ``core`` filled with ``fields``, a tail, then variants.
    ``plain=True`` gives the bare core (the form v1's templates had)."""
    body = core.format(**fields)
    if plain:
        return body
    lead = rng.choice(LEADS)
    if lead.endswith(("but ", "Hey, ", "Excuse me, ")) and body[:1].isupper() \
            and not any(v and body.startswith(str(v)) for v in fields.values()):
        body = body[0].lower() + body[1:]
    text = lead + body + rng.choice(TAILS)
    return vary(text, rng, protect=tuple(str(v) for v in fields.values()))


def n_templates(task: str) -> int:
    """How many distinct lead-in x core x tail templates ``task`` has (before variants)."""
    return len(set(LEADS)) * len(CORES[task]) * len(set(TAILS))
