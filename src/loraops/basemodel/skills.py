"""The general skills the offline base model is pre-trained on (pure Python, seeded, deterministic).

Each skill reads a three-digit number from the instruction and answers by a different rule (count up,
count down, add one to each digit, encode the digits as letters, say them as words). Having several
*distinct* skills lets the evaluation measure, skill by skill, what a LoRA fine-tune made the base
model forget.

Why these: measured on 2 CPU cores, a ~1M-parameter Llama learns within ~1,500 Axolotl steps the
skills whose answer is a fixed-offset read of the digits plus a local rule, and generalizes them to
numbers it never saw. Skills that must find and copy words or letters from anywhere in the prompt
(spell a word, copy a text, uppercase, JSON lookup) stayed at 0% in that budget; a skill with a small
instruction space (parity) was memorized instead of learned.

Besides the scored skills, the corpus carries unscored everyday writing (basemodel/writing.py): a real
base model knows English and JSON before it is fine-tuned, and a fine-tune needs that.

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

from loraops.basemodel.writing import WRITING_SKILL, writing_example
from loraops.errors import ConfigError

if TYPE_CHECKING:
    from loraops.basemodel.recipe import BaseModelRecipe

HELDOUT_PERCENT = 15
# Draws in a row without a new held-out instruction before general_suite decides the skill has no more.
_MAX_MISSES = 20_000

LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Common English words (nouns, adjectives, verbs), only for the tokenizer.
_WORDS_TEXT = """
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
"""

# Frequent English words (function words, everyday verbs and nouns), only for the tokenizer.
_GENERAL_TEXT = """
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
    category priority medium status level type kind billing shipping technical general smart cloud
    drive photo vault video wallet plus hub box mail item color size facts record text
"""


@dataclass(frozen=True)
class Skill:
    """One general skill: ``make(rng)`` returns an ``(instruction, expected_output)`` pair."""

    name: str
    description: str
    make: Callable[[random.Random], tuple[str, str]]
    max_new_tokens: int


def _count_up(rng: random.Random) -> tuple[str, str]:
    start = rng.randint(100, 995)
    return f"Count up from {start}.", " ".join(str(start + i) for i in range(4))


def _count_down(rng: random.Random) -> tuple[str, str]:
    start = rng.randint(104, 999)
    return f"Count down from {start}.", " ".join(str(start - i) for i in range(4))


def _add_one_each(rng: random.Random) -> tuple[str, str]:
    number = str(rng.randint(100, 999))
    return f"Add one to each digit of {number}.", "".join(str((int(d) + 1) % 10) for d in number)


def _digit_letters(rng: random.Random) -> tuple[str, str]:
    number = str(rng.randint(100, 999))
    return f"Encode {number} as letters.", " ".join(LETTERS[int(d)] for d in number)


def _digit_words(rng: random.Random) -> tuple[str, str]:
    number = str(rng.randint(100, 999))
    return f"Say the digits of {number} as words.", " ".join(DIGIT_WORDS[int(d)] for d in number)


SKILLS: dict[str, Skill] = {
    s.name: s
    for s in (
        Skill("count_up", "the number and the three after it", _count_up, 24),
        Skill("count_down", "the number and the three before it", _count_down, 24),
        Skill("add_one_each", "add one to every digit, 9 wraps to 0", _add_one_each, 8),
        Skill("digit_letters", "each digit as a letter, 0=a ... 9=j", _digit_letters, 10),
        Skill("digit_words", "each digit as an English word", _digit_words, 10),
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
    """``examples_per_skill`` alpaca records per skill (no-input form) and ``writing_examples`` unscored
    writing records (skill ``writing``), shuffled, held-out side excluded.

    Training instructions may repeat (some skills have small instruction spaces).
    """
    records: list[dict[str, str]] = []
    writing_rng = _rng(recipe.seed, WRITING_SKILL, "train")
    for _ in range(recipe.writing_examples):
        records.append(_record(WRITING_SKILL, *writing_example(writing_rng)))
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
        misses = 0
        while len(seen) < n_per_skill:
            instruction, output = skill.make(rng)
            if instruction in seen or not is_heldout(name, instruction):
                misses += 1
                if misses > _MAX_MISSES:
                    raise ConfigError(
                        f"the general suite asks for {n_per_skill} examples per skill, but skill "
                        f"{name!r} has only {len(seen)} held-out instructions",
                        hint="lower evaluate.general_per_skill (or the recipe's eval_examples_per_skill)",
                    )
                continue
            misses = 0
            seen.add(instruction)
            suite.append(_record(name, instruction, output))
    return suite


def tokenizer_texts() -> list[str]:
    """General text for the tokenizer besides the corpus, so that everyday English and JSON (what a
    fine-tune brings) do not fall apart into single bytes. Repeated so its merges compete with the
    corpus's."""
    words = [*_GENERAL_TEXT.split(), *_WORDS_TEXT.split()]
    records = [json.dumps({k: v}) for k, v in zip(words[::2], words[1::2], strict=False)]
    lines = [
        " ".join(words),
        " ".join(w.title() for w in words),
        " ".join(w.upper() for w in words),
        ", ".join(records),
    ]
    return lines * 50
