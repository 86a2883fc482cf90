"""The general skills the offline base model is pre-trained on (pure Python, seeded, deterministic).

Each skill is a small task that a few-million-parameter model learns in minutes on CPU and that
generalizes to unseen instructions: copying, spelling, digit-level counting, key lookup. Having
several *distinct* skills lets the evaluation measure, skill by skill, what a LoRA fine-tune made the
base model forget.

Held-out split: an instruction belongs to the evaluation side when a hash of (skill, instruction) falls
in the lowest ``HELDOUT_PERCENT`` buckets. Training examples are drawn only from the other side, so the
general suite is disjoint from the training corpus by construction, whatever the corpus size.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loraops.basemodel.recipe import BaseModelRecipe

HELDOUT_PERCENT = 15

# Common English words: values for the copy/lookup skills, and the general text the tokenizer learns.
WORDS: tuple[str, ...] = tuple(
    """
    apple river stone garden window orange yellow purple silver golden forest ocean mountain valley
    island desert winter summer spring autumn morning evening night light shadow cloud storm rain snow
    wind thunder fire water earth metal paper glass wood bread butter cheese honey sugar salt pepper
    lemon cherry grape melon peach plum carrot potato tomato onion garlic rice pasta soup salad coffee
    tea milk juice dog cat horse mouse rabbit tiger lion bear wolf fox eagle owl swan duck fish shark
    whale snake frog bee ant spider house table chair door floor wall roof kitchen bedroom garage school
    office market library hospital station airport bridge tower castle village city country road street
    car truck train plane boat ship bicycle engine wheel button pencil letter book story poem song music
    piano guitar drum picture camera phone screen computer keyboard printer cable battery lamp candle
    clock watch mirror basket bottle bucket hammer ladder rope needle pocket wallet ticket coin money
    price market friend family mother father sister brother child teacher doctor farmer driver pilot
    singer writer painter player king queen prince captain soldier red green blue black white brown
    pink gray bright dark quiet loud happy sad angry calm brave clever gentle kind proud shy tall short
    small large heavy soft hard warm cold fresh sweet bitter quick slow early late easy simple strong
    young old new clean round sharp smooth empty full rich poor wild safe open close begin finish jump
    run walk swim climb dance sing read write draw paint cook bake wash build carry follow listen learn
    teach travel visit answer ask help call send order change check update return start stop move
    """.split()
)

# Frequent English words (function words, everyday verbs and nouns), only for the tokenizer.
GENERAL_WORDS: tuple[str, ...] = tuple(
    """
    the a an and or but if then than so because of to in on at by for with from about into over after
    before under between through during without again also only just not no yes very too more most
    less some any all each every other such own same few many much this that these those here there
    when where why how what which who whom whose i me my mine we us our you your he him his she her it
    its they them their is are was were be been being am have has had do does did done will would can
    could should may might must shall get got make made take took give gave go went gone come came see
    saw know knew think thought want need use used find found tell told say said work works working
    try tried leave left keep kept let put mean seem feel show shows hear play pay paid lose lost buy
    bought sell sold wait waited please thanks thank hello hi hey dear sorry sure okay today tomorrow
    yesterday week month year day time hour minute now soon still already never always often sometimes
    again ago since until while problem issue error question request reply account password email
    message number address name order payment invoice refund charge card bill price service support
    customer team app application website page login update version device system data file account
    delivery package box item product subscription plan free help urgent important fast slow broken
    wrong right first last next new old good bad best better worse great little big long high low
    """.split()
)

# Syllables for made-up words: spelling must generalize to words never spelled in training, so the
# model learns letters of short, shared pieces rather than memorizing whole-word tokens.
_ONSETS = "b d f g k l m n p r s t v z"
_VOWELS = "a e i o u"
SYLLABLES: tuple[str, ...] = tuple(c + v for c in _ONSETS.split() for v in _VOWELS.split())

JSON_KEYS: tuple[str, ...] = ("name", "city", "color", "animal", "food", "tool", "place", "drink")


@dataclass(frozen=True)
class Skill:
    """One general skill: ``make(rng)`` returns an ``(instruction, expected_output)`` pair."""

    name: str
    description: str
    make: Callable[[random.Random], tuple[str, str]]
    max_new_tokens: int


def _made_up_word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))


def _spell(rng: random.Random) -> tuple[str, str]:
    word = _made_up_word(rng)
    return f'Spell "{word}" with dashes.', "-".join(word)


def _uppercase(rng: random.Random) -> tuple[str, str]:
    words = " ".join(rng.sample(WORDS, rng.randint(2, 3)))
    return f'Write "{words}" in capital letters.', words.upper()


def _repeat(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    times = rng.randint(2, 4)
    return f'Repeat "{word}" {times} times.', " ".join([word] * times)


def _next_number(rng: random.Random) -> tuple[str, str]:
    number = rng.randint(0, 999)
    return f"What number comes after {number}?", str(number + 1)


def _json_value(rng: random.Random) -> tuple[str, str]:
    keys = rng.sample(JSON_KEYS, rng.randint(2, 3))
    record = {key: rng.choice(WORDS) for key in keys}
    asked = rng.choice(keys)
    return f'What is the value of "{asked}" in {json.dumps(record)}?', record[asked]


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _copy(rng: random.Random) -> tuple[str, str]:
    text = " ".join(rng.sample(WORDS, rng.randint(3, 5)))
    return f"Copy this text.\n{text}", text


def _next_number3(rng: random.Random) -> tuple[str, str]:
    number = rng.randint(100, 998)
    return f"What number comes after {number}?", str(number + 1)


def _upper_letters(rng: random.Random) -> tuple[str, str]:
    letters = " ".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 6)))
    return f"Write these letters in capitals.\n{letters}", letters.upper()


def _next_letter(rng: random.Random) -> tuple[str, str]:
    letters = [rng.choice(_LETTERS[:-1]) for _ in range(rng.randint(3, 6))]
    shifted = [_LETTERS[_LETTERS.index(c) + 1] for c in letters]
    return f"Write the letter after each one.\n{' '.join(letters)}", " ".join(shifted)


def _spell2(rng: random.Random) -> tuple[str, str]:
    word = _made_up_word(rng)
    return f"Spell this word with dashes.\n{word}", "-".join(word)


def _count_up(rng: random.Random) -> tuple[str, str]:
    start = rng.randint(100, 990)
    return f"Count up from {start}.", " ".join(str(start + i) for i in range(6))


def _count_down(rng: random.Random) -> tuple[str, str]:
    start = rng.randint(110, 999)
    return f"Count down from {start}.", " ".join(str(start - i) for i in range(6))


def _alphabet(rng: random.Random) -> tuple[str, str]:
    start = rng.randint(0, 19)
    return f"Continue the alphabet after {_LETTERS[start]}.", " ".join(_LETTERS[start + 1 : start + 7])


def _copy_long(rng: random.Random) -> tuple[str, str]:
    text = " ".join(rng.sample(WORDS, rng.randint(6, 9)))
    return f"Copy this text.\n{text}", text


_DIGIT_WORDS = "zero one two three four five six seven eight nine".split()


def _count_up4(rng: random.Random) -> tuple[str, str]:
    start = rng.randint(100, 995)
    return f"Count up from {start}.", " ".join(str(start + i) for i in range(4))


def _count_down4(rng: random.Random) -> tuple[str, str]:
    start = rng.randint(104, 999)
    return f"Count down from {start}.", " ".join(str(start - i) for i in range(4))


def _upper5(rng: random.Random) -> tuple[str, str]:
    letters = " ".join(rng.choice(_LETTERS) for _ in range(5))
    return f"Write these letters in capitals.\n{letters}", letters.upper()


def _next_letter4(rng: random.Random) -> tuple[str, str]:
    letters = [rng.choice(_LETTERS[:-1]) for _ in range(4)]
    shifted = [_LETTERS[_LETTERS.index(c) + 1] for c in letters]
    return f"Write the letter after each one.\n{' '.join(letters)}", " ".join(shifted)


def _digit_words(rng: random.Random) -> tuple[str, str]:
    number = rng.randint(100, 999)
    return f"Say the digits of {number} as words.", " ".join(_DIGIT_WORDS[int(d)] for d in str(number))


def _copy_letters5(rng: random.Random) -> tuple[str, str]:
    letters = " ".join(rng.choice(_LETTERS) for _ in range(5))
    return f"Copy these letters.\n{letters}", letters


SKILLS: dict[str, Skill] = {
    s.name: s
    for s in (
        Skill("spell", "spell a made-up word letter by letter with dashes", _spell, 16),
        Skill("uppercase", "rewrite two or three words in capital letters", _uppercase, 24),
        Skill("repeat", "repeat a word two to four times", _repeat, 16),
        Skill("next_number", "the integer after a number below 1000", _next_number, 8),
        Skill("json_value", "read the value of a key from a small JSON object", _json_value, 8),
        Skill("copy", "copy", _copy, 16),
        Skill("next_number3", "n3", _next_number3, 8),
        Skill("upper_letters", "ul", _upper_letters, 16),
        Skill("next_letter", "nl", _next_letter, 16),
        Skill("spell2", "s2", _spell2, 16),
        Skill("count_up", "s2", _count_up, 30),
        Skill("count_down", "s2", _count_down, 30),
        Skill("alphabet", "s2", _alphabet, 16),
        Skill("copy_long", "s2", _copy_long, 30),
        Skill("count_up4", "s2", _count_up4, 20),
        Skill("count_down4", "s2", _count_down4, 20),
        Skill("upper5", "s2", _upper5, 12),
        Skill("next_letter4", "s2", _next_letter4, 12),
        Skill("digit_words", "s2", _digit_words, 12),
        Skill("copy_letters5", "s2", _copy_letters5, 12),
    )
}


def is_heldout(skill: str, instruction: str) -> bool:
    """True when the instruction belongs to the evaluation side of the split (stable across runs)."""
    digest = hashlib.sha256(f"{skill}\0{instruction}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELDOUT_PERCENT


def _record(skill: str, instruction: str, output: str) -> dict[str, str]:
    return {"instruction": instruction, "input": "", "output": output, "skill": skill}


def _rng(seed: int, skill: str, purpose: str) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random, so it is stable across processes.
    return random.Random(f"loraops:{seed}:{skill}:{purpose}")


def _skill(name: str) -> Skill:
    try:
        return SKILLS[name]
    except KeyError:
        raise ValueError(f"unknown skill {name!r}; known: {', '.join(SKILLS)}") from None


def training_corpus(recipe: BaseModelRecipe) -> list[dict[str, str]]:
    """``examples_per_skill`` alpaca records per skill (no-input form), shuffled, held-out side excluded.

    Training instructions may repeat (some skills have small instruction spaces).
    """
    records: list[dict[str, str]] = []
    for name in recipe.skills:
        skill = _skill(name)
        rng = _rng(recipe.seed, name, "train")
        count = 0
        while count < recipe.examples_per_skill:
            instruction, output = skill.make(rng)
            if is_heldout(name, instruction):
                continue
            records.append(_record(name, instruction, output))
            count += 1
    _rng(recipe.seed, "all", "shuffle").shuffle(records)
    return records


def general_suite(recipe: BaseModelRecipe, n_per_skill: int) -> list[dict[str, str]]:
    """``n_per_skill`` distinct held-out records per skill: the general-ability evaluation set."""
    suite: list[dict[str, str]] = []
    for name in recipe.skills:
        skill = _skill(name)
        rng = _rng(recipe.seed, name, "eval")
        seen: set[str] = set()
        attempts = 0
        while len(seen) < n_per_skill:
            attempts += 1
            if attempts > 1000 * max(n_per_skill, 1):
                raise ValueError(f"skill {name!r} has fewer than {n_per_skill} held-out instructions")
            instruction, output = skill.make(rng)
            if instruction in seen or not is_heldout(name, instruction):
                continue
            seen.add(instruction)
            suite.append(_record(name, instruction, output))
    return suite


def tokenizer_texts() -> list[str]:
    """General English for the tokenizer besides the corpus, so that everyday text (what a fine-tune
    brings) does not fall apart into single bytes. Repeated so its merges can compete with the corpus."""
    words = [*GENERAL_WORDS, *WORDS, *JSON_KEYS]
    lines = [" ".join(words), " ".join(w.title() for w in words), " ".join(w.upper() for w in words)]
    return lines * 4
