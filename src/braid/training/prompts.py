"""Chat prompts for self-distillation, made here: templates over word lists written for braid,
plus passages cut from CPython standard-library docstrings (PSF-2.0, the corpus of
:mod:`braid.training.corpus`). No benchmark prompt is read or imitated by text.

The kinds follow the *categories* a chat benchmark covers (writing, roleplay, reasoning, math,
coding, extraction, STEM, humanities, translation, summarization, question answering, answering
from a passage), so a draft trained on the answers sees the same styles of text; every prompt is a
pure function of (seed, index), so a run is reproducible and resumable by index.
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Callable
from functools import cache

from braid.training.corpus import stdlib_files

SOURCE = (
    "templates and word lists written for braid (src/braid/training/prompts.py) and passages "
    "from CPython standard-library docstrings (PSF-2.0)"
)

TOPICS = [
    "the ocean",
    "a small village",
    "autumn leaves",
    "a lighthouse",
    "the first day of school",
    "a lost key",
    "friendship",
    "a rainy afternoon",
    "the city at night",
    "a mountain trail",
    "an old library",
    "a garden in spring",
    "learning to cook",
    "a train journey",
    "the moon",
    "a forgotten letter",
    "a busy market",
    "winter mornings",
    "a river",
    "a music festival",
    "a new job",
    "moving to a new house",
    "a family dinner",
    "a bicycle ride",
    "the desert",
    "a snowstorm",
    "a museum visit",
    "a quiet beach",
    "an island",
    "a bakery",
    "time",
    "kindness",
    "a long flight",
    "a school science fair",
    "a soccer match",
    "a birthday",
    "the stars",
    "a coffee shop",
    "a thunderstorm",
    "a forest",
    "a robot",
    "a dragon",
    "a detective",
    "a pirate ship",
    "a space station",
    "a farm",
    "a castle",
    "a city park",
]
PRODUCTS = [
    "a reusable water bottle",
    "a solar phone charger",
    "a standing desk",
    "noise-cancelling headphones",
    "a language-learning app",
    "an electric scooter",
    "a smart thermostat",
    "a hiking backpack",
    "a budgeting app",
    "a coffee grinder",
    "a fitness tracker",
    "a board game for families",
    "a houseplant delivery service",
    "a bike repair kit",
]
AUDIENCES = [
    "children",
    "teenagers",
    "university students",
    "busy parents",
    "retirees",
    "software engineers",
    "small business owners",
    "teachers",
    "tourists",
    "beginners",
]
FORMS = [
    "poem",
    "short story",
    "haiku",
    "limerick",
    "diary entry",
    "speech",
    "blog post",
    "letter",
    "song chorus",
    "fable",
]
TONES = ["cheerful", "formal", "humorous", "sad", "inspiring", "calm", "dramatic", "friendly"]
ROLES = [
    ("a ship's captain", "the crew is worried about a storm"),
    ("a museum guide", "a visitor asks about an ancient vase"),
    ("a medieval knight", "a traveller asks the way to the capital"),
    ("a chef", "a guest complains the soup is cold"),
    ("a detective", "you examine a room where a painting went missing"),
    ("a tour guide in Paris", "a family asks what to see in one day"),
    ("a personal trainer", "a client wants to start running"),
    ("a librarian", "a student needs books about volcanoes"),
    ("a shopkeeper", "a customer wants a gift for a friend"),
    ("an astronaut", "a child asks what space smells like"),
    ("a job interviewer", "the candidate has just introduced themself"),
    ("a wise old wizard", "a young apprentice asks about patience"),
    ("a customer support agent", "a user cannot log in to their account"),
    ("a park ranger", "hikers ask whether the trail is safe"),
]
NAMES = [
    "Anna",
    "Ben",
    "Chen",
    "Dara",
    "Elena",
    "Farid",
    "Grace",
    "Hugo",
    "Ines",
    "Jonas",
    "Kemal",
    "Lena",
    "Maya",
    "Noah",
    "Omar",
    "Priya",
    "Ravi",
    "Sara",
    "Tom",
    "Yuki",
]
ITEMS = [
    ("apples", "apple"),
    ("pencils", "pencil"),
    ("books", "book"),
    ("cookies", "cookie"),
    ("marbles", "marble"),
    ("stickers", "sticker"),
    ("eggs", "egg"),
    ("cards", "card"),
    ("tickets", "ticket"),
    ("flowers", "flower"),
]
LANGUAGES = ["French", "Spanish", "German", "Italian", "Portuguese"]
SENTENCES = [
    "The weather is nice today.",
    "Where is the train station?",
    "I would like a cup of tea.",
    "My brother lives in a big city.",
    "We are going to the beach tomorrow.",
    "Thank you for your help.",
    "The book is on the table.",
    "How much does this cost?",
    "I am learning to play the piano.",
    "The children are playing in the garden.",
    "Please close the window.",
    "She works at the hospital.",
    "It is very cold in winter.",
    "Can you recommend a good restaurant?",
    "I have two cats and a dog.",
]
STEM = [
    "photosynthesis",
    "the water cycle",
    "how vaccines work",
    "gravity",
    "the speed of light",
    "plate tectonics",
    "DNA",
    "black holes",
    "electric circuits",
    "the greenhouse effect",
    "how a rainbow forms",
    "the periodic table",
    "Newton's laws of motion",
    "magnetism",
    "how computers store numbers",
    "the human heart",
    "volcanoes",
    "sound waves",
    "atoms",
    "climate and weather",
    "evolution",
    "the immune system",
    "renewable energy",
    "tides",
    "prime numbers",
    "probability",
    "the Pythagorean theorem",
    "friction",
    "cells",
]
HUMANITIES = [
    "the Renaissance",
    "the invention of the printing press",
    "democracy in ancient Athens",
    "the Silk Road",
    "the Industrial Revolution",
    "the role of museums",
    "why people tell stories",
    "the history of money",
    "the ethics of lying",
    "what makes a good leader",
    "the influence of the Roman Empire",
    "the importance of learning languages",
    "the history of the Olympic Games",
    "free will",
    "the purpose of art",
    "urbanisation",
    "the history of writing",
    "the value of public libraries",
    "social media and society",
]
QUESTIONS = [
    "What is the capital of {country}?",
    "Why is the sky blue?",
    "How many days are in a leap year?",
    "What are the benefits of regular exercise?",
    "How do I make a good first impression?",
    "What is the difference between weather and climate?",
    "Give me three tips for better sleep.",
    "What should I pack for a weekend trip to {country}?",
    "What are some healthy breakfast ideas?",
    "How can I save money on groceries?",
    "What is a good way to learn a new language?",
    "Why do cats purr?",
    "How do I politely decline an invitation?",
    "What is the tallest mountain in the world?",
    "What are the main causes of stress and how can I reduce it?",
    "How do airplanes fly?",
    "What is the best way to study for an exam?",
    "Why do leaves change colour in autumn?",
    "What are the planets of the solar system?",
    "How do I start a vegetable garden?",
]
COUNTRIES = [
    "France",
    "Japan",
    "Brazil",
    "Canada",
    "Egypt",
    "India",
    "Italy",
    "Kenya",
    "Mexico",
    "Norway",
    "Spain",
    "Australia",
    "Germany",
    "Peru",
    "Vietnam",
]
CODE_TASKS = [
    "reverses a string",
    "checks whether a number is prime",
    "returns the n-th Fibonacci number",
    "counts the vowels in a string",
    "finds the largest element of a list",
    "removes duplicates from a list while keeping the order",
    "checks whether a word is a palindrome",
    "converts Celsius to Fahrenheit",
    "merges two sorted lists",
    "computes the factorial of a number",
    "sums the digits of an integer",
    "returns the words of a sentence sorted by length",
    "flattens a nested list",
    "counts how often each word occurs in a text",
    "computes the average of a list of numbers",
    "checks whether two strings are anagrams",
    "finds the second largest number in a list",
    "implements binary search",
    "converts a decimal number to binary",
    "reads a file and prints its lines in reverse order",
]
CODE_LANGS = ["Python", "Python", "Python", "JavaScript", "C", "Java", "Rust", "Go"]
CODE_SNIPPETS = [
    "def add(a, b):\n    return a - b",
    "for i in range(10)\n    print(i)",
    "def mean(xs):\n    return sum(xs) / len(xs)\n\nprint(mean([]))",
    "x = [1, 2, 3]\nfor i in range(len(x) + 1):\n    print(x[i])",
    "def is_even(n):\n    if n % 2 == 1:\n        return True\n    return False",
    "name = input('Name: ')\nprint('Hello ' + name + 1)",
]
REASONING = [
    "{a} is taller than {b}, and {b} is taller than {c}. Who is the shortest? Explain.",
    "If all {p} are {q} and some {q} are {r}, must some {p} be {r}? Explain your reasoning.",
    "{a} has twice as many {items} as {b}. Together they have {n3} {items}. How many does each "
    "have?",
    "A farmer has {n1} animals, all chickens and cows, with {legs} legs in total. How many cows "
    "are there? Think step by step.",
    "Three friends, {a}, {b} and {c}, sit in a row. {a} is not at either end and {c} is to the "
    "left of {a}. Who sits on the right?",
    "Is it possible to cut a cake into 8 equal pieces with 3 straight cuts? Explain.",
    "What comes next in the sequence {seq}? Explain the pattern.",
]
CLASSES = [
    ("cats", "animals", "pets"),
    ("roses", "flowers", "red things"),
    ("squares", "rectangles", "shapes with equal sides"),
    ("cars", "vehicles", "electric"),
]
MATH = [
    "{a} has {n1} {items}. {b} gives {a} {n2} more, and then {a} gives away {n3}. How many "
    "{items} does {a} have now?",
    "A shop sells a {item} for ${p1}. How much do {n1} {items} cost? If you pay with ${big}, "
    "how much change do you get?",
    "A train travels at {speed} km per hour for {h} hours. How far does it go?",
    "{a} reads {n2} pages a day. How many days does it take to read a book of {pages} pages?",
    "What is {n1} percent of {big}?",
    "A rectangle is {n1} cm long and {n2} cm wide. What are its area and perimeter?",
    "Solve for x: {n1}x + {n2} = {rhs}.",
    "The average of three numbers is {n1}. Two of them are {n2} and {n3}. What is the third?",
    "{a} saves ${n2} every week. How many weeks until {a} has saved ${big}?",
    "A recipe needs {n2} eggs for {n3} people. How many eggs are needed for {n1} people?",
]


@cache
def docstring_passages(min_chars: int = 300, max_chars: int = 1200) -> tuple[str, ...]:
    """Module and class docstrings of the standard library, as prose paragraphs (PSF-2.0)."""
    out: list[str] = []
    for rel, path in stdlib_files():
        if "test" in rel.split("/")[0] or "/test" in rel or "idle_test" in rel:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        kinds = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        nodes = [n for n in ast.walk(tree) if isinstance(n, kinds)]
        for node in nodes:
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for para in re.split(r"\n\s*\n", doc):
                text = " ".join(para.split())
                # prose only: no doctest, tables, option lists or code
                if min_chars <= len(text) <= max_chars and not re.search(
                    r">>>|::|\|--|\n\s*[-*] ", para
                ):
                    if sum(c.isalpha() or c == " " for c in text) > 0.85 * len(text):
                        out.append(text)
    return tuple(out)


def _fill(rng: random.Random, template: str) -> str:
    a, b, c = rng.sample(NAMES, 3)
    items, item = rng.choice(ITEMS)
    p, q, r = rng.choice(CLASSES)
    n1, n2, n3 = rng.randint(2, 40), rng.randint(2, 25), rng.randint(2, 20)
    start, step = rng.randint(1, 9), rng.randint(2, 7)
    if rng.random() < 0.3:
        seq = ", ".join(str(start * step**i) for i in range(5))
    else:
        seq = ", ".join(str(start + step * i) for i in range(5))
    fields = dict(
        a=a,
        b=b,
        c=c,
        items=items,
        item=item,
        p=p,
        q=q,
        r=r,
        n1=n1,
        n2=n2,
        n3=3 * n3,
        seq=seq,
        p1=rng.randint(2, 20),
        big=rng.choice([50, 100, 120, 200, 250, 500, 1000]),
        speed=rng.choice([60, 80, 90, 120, 150]),
        h=rng.randint(2, 9),
        pages=rng.randint(100, 600),
        rhs=n1 * rng.randint(1, 12) + n2,
    )
    if "{legs}" in template:  # a consistent chickens-and-cows count
        heads = rng.randint(5, 30)
        fields.update(n1=heads, legs=2 * heads + 2 * rng.randint(1, heads - 1))
    return template.format(**fields)


def _writing(rng: random.Random) -> str:
    t = rng.random()
    if t < 0.5:
        return f"Write a {rng.choice(TONES)} {rng.choice(FORMS)} about {rng.choice(TOPICS)}."
    if t < 0.75:
        return (
            f"Write a short product description of {rng.choice(PRODUCTS)} for "
            f"{rng.choice(AUDIENCES)}."
        )
    return (
        f"Write an email to my {rng.choice(['manager', 'teacher', 'neighbour', 'friend'])} "
        f"about {rng.choice(TOPICS)}. Keep it {rng.choice(TONES)}."
    )


def _roleplay(rng: random.Random) -> str:
    role, scene = rng.choice(ROLES)
    return f"Pretend you are {role}. {scene[0].upper() + scene[1:]}. What do you say?"


def _reasoning(rng: random.Random) -> str:
    return _fill(rng, rng.choice(REASONING))


def _math(rng: random.Random) -> str:
    return _fill(rng, rng.choice(MATH))


def _coding(rng: random.Random) -> str:
    if rng.random() < 0.75:
        return f"Write a {rng.choice(CODE_LANGS)} function that {rng.choice(CODE_TASKS)}."
    return f"Find and fix the bug in this code:\n\n{rng.choice(CODE_SNIPPETS)}"


def _stem(rng: random.Random) -> str:
    how = rng.choice(
        [
            "Explain {} in simple terms.",
            "What is {}?",
            "Explain {} to {}.",
            "Give a short overview of {}.",
        ]
    )
    return how.format(rng.choice(STEM), rng.choice(AUDIENCES))


def _humanities(rng: random.Random) -> str:
    how = rng.choice(
        [
            "Discuss {}.",
            "Why is {} important?",
            "Write a short essay on {}.",
            "What can we learn from {}?",
        ]
    )
    return how.format(rng.choice(HUMANITIES))


def _translation(rng: random.Random) -> str:
    s = " ".join(rng.sample(SENTENCES, rng.randint(1, 3)))
    return f"Translate into {rng.choice(LANGUAGES)}: {s}"


def _qa(rng: random.Random) -> str:
    return rng.choice(QUESTIONS).format(country=rng.choice(COUNTRIES))


def _passage(rng: random.Random) -> str:
    passages = docstring_passages()
    return passages[rng.randrange(len(passages))]


def _summarization(rng: random.Random) -> str:
    ask = rng.choice(
        [
            "Summarize the following text in two sentences.",
            "Summarize this paragraph.",
            "Give a one-sentence summary of this text.",
            "Rewrite this text in plain words for a beginner.",
        ]
    )
    return f"{ask}\n\n{_passage(rng)}"


def _extraction(rng: random.Random) -> str:
    ask = rng.choice(
        [
            "List the key terms in the following text.",
            "Extract the main points of this text as a bulleted list.",
            "What names of functions, classes or modules does this text mention?",
        ]
    )
    return f"{ask}\n\n{_passage(rng)}"


def _rag(rng: random.Random) -> str:
    ask = rng.choice(
        [
            "What does this describe?",
            "What is it used for?",
            "What is the main limitation mentioned?",
            "Who would use this, and why?",
        ]
    )
    return (
        f"Answer the question using only the passage.\n\nPassage: {_passage(rng)}\n\n"
        f"Question: {ask}"
    )


KINDS: dict[str, Callable[[random.Random], str]] = {
    "writing": _writing,
    "roleplay": _roleplay,
    "reasoning": _reasoning,
    "math": _math,
    "coding": _coding,
    "extraction": _extraction,
    "stem": _stem,
    "humanities": _humanities,
    "translation": _translation,
    "summarization": _summarization,
    "qa": _qa,
    "rag": _rag,
}


def make_prompt(seed: int, index: int) -> tuple[str, str]:
    """(kind, user message) number `index` of the stream seeded by `seed`."""
    rng = random.Random(f"{seed}:{index}")
    kind = list(KINDS)[index % len(KINDS)]
    return kind, KINDS[kind](rng)
