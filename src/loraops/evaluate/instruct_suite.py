"""A general suite for a real instruct model, offline: what the base model does right, checked by code.

Forgetting is a drop in what the base model could do, so the suite holds only what the base model does
firmly, through the server, with its own chat template: right greedily, and in at least 7 of 8 answers
sampled at temperature 0.7 (fixed seeds). A question the base gets right only on its greedy path flips
under any small change of the weights and would read as forgetting; one it gets right however it is
sampled is a skill it has. A drop is then the share of them the candidate gets wrong.

Three skills, each an lm-eval ``generate_until`` task of the group ``loraops_instruct``, asked through
the chat endpoint:

- ``opposites``: "What is the opposite of hot?" passes when the answer says cold (vocabulary);
- ``plurals``: 'What is the plural of "mouse"?' passes when the answer has the word mice (grammar);
- ``keywords``: 'Write one sentence about rain that includes the word "quiet".' passes when the word
  is there (an IFEval-style verifiable constraint).

Tried on SmolLM2-135M-Instruct and left out, because the model does not hold them firmly: capitals
(of 60 it answered greedily and in 3 of 4 samples at temperature 0.5, only 33 held 7 of 8 at 0.7, and
the misses of LoRA adapters of the triage task fell mostly on the other 27), one-digit arithmetic (17 of
181 held even 3 of 4 at 0.5), the next day, month or number (0 of 76), the colour of things (1 of 40:
the answer runs past 48 tokens before naming it), a word written in upper case (0 of 50).

The checks live in ``lm_eval_tasks/loraops_instruct/utils.py`` (lm-eval imports them from there). The
shipped data was selected with SmolLM2-135M-Instruct; for another base model build it again against a
server that serves it::

    .venv/bin/python -m loraops.evaluate.instruct_suite --url http://127.0.0.1:8000/v1 --model NAME \\
        --api-key-file .loraops/vllm-api.key --out my_tasks/loraops_instruct

and point ``evaluate.forgetting.include_path`` at the directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from loraops.evaluate.runner import CompletionClient
from loraops.files import write_text_atomic

GROUP = "loraops_instruct"
SHIPPED = Path(__file__).parent / "lm_eval_tasks" / GROUP
SKILLS = ("opposites", "plurals", "keywords")
MAX_TOKENS = 48
SAMPLES = 8
TEMPERATURE = 0.7
ALLOWED_MISSES = 1

PLURALS = {
    "cat": "cats", "dog": "dogs", "box": "boxes", "child": "children", "mouse": "mice", "man": "men",
    "woman": "women", "tooth": "teeth", "foot": "feet", "person": "people", "city": "cities",
    "baby": "babies",
    "leaf": "leaves", "knife": "knives", "wolf": "wolves", "bus": "buses", "glass": "glasses",
    "church": "churches", "tomato": "tomatoes", "potato": "potatoes", "hero": "heroes", "book": "books",
    "tree": "trees", "car": "cars", "house": "houses", "apple": "apples", "bird": "birds", "fox": "foxes",
    "dish": "dishes", "watch": "watches", "goose": "geese", "ox": "oxen", "wife": "wives", "life": "lives",
    "party": "parties", "story": "stories", "day": "days", "key": "keys", "toy": "toys", "boy": "boys",
    "girl": "girls", "friend": "friends", "horse": "horses", "flower": "flowers", "chair": "chairs",
    "table": "tables", "pencil": "pencils", "bottle": "bottles", "window": "windows", "door": "doors",
    "river": "rivers", "mountain": "mountains", "country": "countries", "family": "families",
    "lady": "ladies", "berry": "berries", "cherry": "cherries", "puppy": "puppies", "brush": "brushes",
    "class": "classes", "kiss": "kisses", "wish": "wishes", "match": "matches", "bench": "benches",
    "lunch": "lunches", "beach": "beaches", "half": "halves", "shelf": "shelves", "loaf": "loaves",
    "thief": "thieves", "calf": "calves", "hat": "hats", "pen": "pens", "cup": "cups", "shoe": "shoes",
    "egg": "eggs", "star": "stars", "hand": "hands", "cactus": "cacti", "fungus": "fungi",
    "crisis": "crises", "bike": "bikes", "ship": "ships", "plane": "planes", "dress": "dresses",
    "teacher": "teachers", "student": "students", "doctor": "doctors", "farmer": "farmers",
    "king": "kings", "queen": "queens", "bee": "bees", "ant": "ants", "frog": "frogs", "duck": "ducks",
    "cow": "cows", "pig": "pigs", "lion": "lions", "tiger": "tigers", "monkey": "monkeys",
    "donkey": "donkeys", "turkey": "turkeys", "valley": "valleys", "journey": "journeys",
    "chimney": "chimneys", "lily": "lilies", "fly": "flies", "spy": "spies", "sky": "skies",
    "army": "armies", "penny": "pennies", "body": "bodies", "hobby": "hobbies", "copy": "copies",
    "fax": "faxes", "tax": "taxes", "fix": "fixes", "quiz": "quizzes", "gas": "gases", "boss": "bosses",
    "bush": "bushes", "dash": "dashes", "flash": "flashes",
    "inch": "inches", "peach": "peaches", "coach": "coaches", "scarf": "scarves",
    "elf": "elves", "self": "selves", "hoof": "hooves", "echo": "echoes", "cargo": "cargoes",
    "louse": "lice", "die": "dice",
    "nucleus": "nuclei", "radius": "radii", "analysis": "analyses",
    "thesis": "theses", "basis": "bases", "phenomenon": "phenomena", "criterion": "criteria",
    "datum": "data", "medium": "media", "index": "indices", "matrix": "matrices", "vertex": "vertices",
    "garden": "gardens", "road": "roads", "street": "streets", "shop": "shops", "song": "songs",
    "game": "games", "ball": "balls", "lamp": "lamps", "plate": "plates", "spoon": "spoons",
    "fork": "forks", "bag": "bags", "coat": "coats", "sock": "socks", "ring": "rings", "coin": "coins",
}  # fmt: skip
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad", "light": "dark",
    "old": "new", "open": "closed", "wet": "dry", "high": "low", "early": "late", "full": "empty",
    "hard": "soft", "strong": "weak", "long": "short", "day": "night", "black": "white", "left": "right",
    "good": "bad", "true": "false", "win": "lose", "buy": "sell", "push": "pull", "give": "take",
    "love": "hate", "near": "far", "thick": "thin", "heavy": "light", "clean": "dirty", "loud": "quiet",
    "rich": "poor", "young": "old", "tall": "short", "start": "end", "north": "south", "east": "west",
    "inside": "outside", "above": "below", "before": "after", "first": "last", "add": "subtract",
    "alive": "dead", "safe": "dangerous", "easy": "difficult", "friend": "enemy", "question": "answer",
    "sweet": "sour", "wide": "narrow", "deep": "shallow", "cheap": "expensive", "sharp": "dull",
    "success": "failure", "morning": "evening", "summer": "winter", "arrive": "leave", "accept": "reject",
    "always": "never", "maximum": "minimum", "increase": "decrease", "positive": "negative",
    "remember": "forget", "laugh": "cry", "boy": "girl", "king": "queen", "brother": "sister",
    "front": "back", "top": "bottom", "asleep": "awake", "inhale": "exhale", "import": "export",
    "major": "minor", "solid": "liquid", "victory": "defeat", "war": "peace", "ancient": "modern",
    "fat": "thin", "best": "worst", "more": "less", "many": "few", "sunrise": "sunset", "dry": "wet",
    "cold": "hot", "small": "big", "slow": "fast", "sad": "happy", "dark": "light", "empty": "full",
    "closed": "open", "low": "high", "late": "early", "weak": "strong", "night": "day", "white": "black",
    "soft": "hard", "short": "long", "new": "old", "down": "up", "bad": "good", "false": "true",
    "lose": "win", "sell": "buy", "pull": "push", "take": "give", "hate": "love", "far": "near",
    "thin": "thick", "dirty": "clean", "quiet": "loud", "poor": "rich", "end": "start", "south": "north",
    "west": "east", "outside": "inside", "below": "above", "after": "before", "last": "first",
    "dead": "alive", "dangerous": "safe", "difficult": "easy", "enemy": "friend", "answer": "question",
    "narrow": "wide", "shallow": "deep", "expensive": "cheap", "never": "always", "minimum": "maximum",
    "agree": "disagree", "appear": "disappear", "possible": "impossible", "visible": "invisible",
    "correct": "incorrect", "honest": "dishonest", "legal": "illegal", "lock": "unlock", "mother": "father",
    "husband": "wife", "uncle": "aunt", "son": "daughter", "nephew": "niece", "come": "go",
    "borrow": "lend", "sink": "float", "rise": "fall", "entrance": "exit", "plus": "minus", "odd": "even",
    "yes": "no", "over": "under", "here": "there", "everything": "nothing", "smooth": "rough",
    "loose": "tight", "tame": "wild", "brave": "cowardly", "polite": "rude", "kind": "cruel",
    "generous": "selfish", "patient": "impatient", "private": "public", "permanent": "temporary",
    "include": "exclude", "attack": "defend", "heaven": "hell", "hero": "villain", "past": "future",
    "birth": "death", "arrival": "departure", "vertical": "horizontal", "upstairs": "downstairs",
    "indoor": "outdoor", "forward": "backward", "guilty": "innocent", "raw": "cooked", "shut": "open",
    "father": "mother", "wife": "husband", "aunt": "uncle", "daughter": "son", "go": "come",
    "fall": "rise", "exit": "entrance", "even": "odd", "no": "yes", "under": "over", "there": "here",
    "nothing": "everything", "rough": "smooth", "tight": "loose", "wild": "tame", "rude": "polite",
    "future": "past", "death": "birth", "innocent": "guilty", "backward": "forward",
}  # fmt: skip
TOPICS = [
    "the sea", "dogs", "coffee", "winter", "music", "the moon", "trees", "bread", "rain", "books", "cats",
    "the sun", "gardens", "trains", "snow", "friendship", "chess", "bicycles", "mountains", "the city",
    "rivers", "birds", "cooking", "the night", "flowers", "school", "the beach", "autumn", "apples", "tea",
]  # fmt: skip
KEYWORDS = ["blue", "happy", "water", "light", "green", "small", "warm", "quiet", "bright", "fresh", "old",
            "soft"]  # fmt: skip


@dataclass(frozen=True)
class Item:
    """One question of the suite: the user's message, how the answer is checked, against what."""

    skill: str
    prompt: str
    check: str
    target: str

    def row(self) -> dict[str, str]:
        return {"prompt": self.prompt, "check": self.check, "target": self.target}


def candidate_items(seed: int = 0) -> dict[str, list[Item]]:
    """Every candidate question per skill, in a seeded order (the suite keeps those the base answers)."""
    rng = random.Random(seed)
    pools: dict[str, list[Item]] = {
        "opposites": [
            Item("opposites", f"What is the opposite of {word}?", "contains", opposite)
            for word, opposite in OPPOSITES.items()
        ],
        "plurals": [
            Item("plurals", f'What is the plural of "{noun}"?', "word", plural)
            for noun, plural in PLURALS.items()
        ],
        "keywords": [
            Item("keywords", f'Write one sentence about {topic} that includes the word "{w}".', "word", w)
            for topic in TOPICS
            for w in KEYWORDS
        ],
    }
    for items in pools.values():
        rng.shuffle(items)
    return pools


def load_checks(tasks_dir: Path = SHIPPED) -> ModuleType:
    """The checks lm-eval runs (``utils.py`` of the task directory), for use outside lm-eval."""
    spec = importlib.util.spec_from_file_location("loraops_instruct_utils", tasks_dir / "utils.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def passes(item: Item, answer: str) -> bool:
    """Whether ``answer`` passes ``item``'s check (the function lm-eval calls)."""
    return bool(load_checks().check(item.check, item.target, answer))


_TASK_YAML = """\
task: {name}
tag: [{group}]
dataset_path: json
dataset_kwargs:
  data_files:
    test: data/{skill}.jsonl
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{target}}}}"
process_results: !function utils.process_results
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: {max_tokens}
  do_sample: false
  temperature: 0.0
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1
  description: "loraops instruct suite, skill {skill} (the base model answers every example right)"
"""


def write_tasks(
    selected: Mapping[str, Sequence[Item]], dest: Path, *, max_tokens: int = MAX_TOKENS
) -> list[str]:
    """The suite as lm-eval tasks in ``dest`` (task YAMLs, group, data, checks); returns the task names."""
    (dest / "data").mkdir(parents=True, exist_ok=True)
    names = []
    for skill, items in selected.items():
        name = f"{GROUP}_{skill}"
        rows = "".join(json.dumps(item.row(), sort_keys=True) + "\n" for item in items)
        write_text_atomic(dest / "data" / f"{skill}.jsonl", rows)
        text = _TASK_YAML.format(name=name, group=GROUP, skill=skill, max_tokens=max_tokens)
        write_text_atomic(dest / f"{skill}.yaml", text)
        names.append(name)
    group = (
        f"group: {GROUP}\ntask:\n"
        + "".join(f"  - {n}\n" for n in names)
        + "aggregate_metric_list:\n  - metric: acc\n    aggregation: mean\n    weight_by_size: true\n"
        + "metadata:\n  version: 1\n"
    )
    write_text_atomic(dest / f"_{GROUP}.yaml", group)
    if dest.resolve() != SHIPPED.resolve():
        write_text_atomic(dest / "utils.py", (SHIPPED / "utils.py").read_text("utf-8"))
    return names


def firm(item: Item, greedy: str, sampled: Sequence[str], allowed_misses: int = ALLOWED_MISSES) -> bool:
    """Whether the greedy answer passes and at most ``allowed_misses`` sampled ones fail."""
    return passes(item, greedy) and sum(not passes(item, a) for a in sampled) <= allowed_misses


def select_answered(
    greedy: Callable[[list[Item]], list[str]],
    sampled: Callable[[list[Item]], list[list[str]]],
    per_skill: int,
    pools: dict[str, list[Item]] | None = None,
    chunk: int = 48,
    allowed_misses: int = ALLOWED_MISSES,
) -> dict[str, list[Item]]:
    """Per skill, the first ``per_skill`` candidates (in pool order) that the model answers firmly:
    ``greedy`` gives each item's greedy answer; ``sampled`` is asked only for those right greedily."""
    pools = pools or candidate_items()
    selected: dict[str, list[Item]] = {}
    for skill, items in pools.items():
        kept: list[Item] = []
        for start in range(0, len(items), chunk):  # in chunks: stop asking once enough are kept
            batch = items[start : start + chunk]
            right = [(i, a) for i, a in zip(batch, greedy(batch), strict=True) if passes(i, a)]
            tries = sampled([i for i, _ in right]) if right else []
            kept += [i for (i, a), more in zip(right, tries, strict=True) if firm(i, a, more, allowed_misses)]
            if len(kept) >= per_skill:
                break
        if len(kept) < per_skill:
            raise ValueError(
                f"{skill}: the model answered {len(kept)} of {len(items)} candidates firmly, fewer than "
                f"{per_skill}; lower --per-skill or add candidates"
            )
        selected[skill] = kept[:per_skill]
    return selected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the server's /v1 URL")
    parser.add_argument("--model", required=True, help="served name of the base model")
    parser.add_argument("--api-key-file", type=Path, help="file with the server's API key")
    # 60: both error rates of the forgetting check stay under 5% (tests/test_gate_simulation.py)
    parser.add_argument("--per-skill", type=int, default=60)
    parser.add_argument("--samples", type=int, default=SAMPLES, help="sampled answers that must pass too")
    parser.add_argument("--allowed-misses", type=int, default=ALLOWED_MISSES, help="of the sampled answers")
    parser.add_argument("--temperature", type=float, default=TEMPERATURE, help="of the sampled answers")
    parser.add_argument("--out", type=Path, default=SHIPPED)
    args = parser.parse_args(argv)
    key = args.api_key_file.read_text("utf-8").strip() if args.api_key_file else None
    greedy_client = CompletionClient(args.url, concurrency=16, api_key=key)
    sampling_clients = [
        CompletionClient(
            args.url, concurrency=16, api_key=key, sampling={"temperature": args.temperature, "seed": seed}
        )
        for seed in range(1, args.samples + 1)
    ]

    def answers(client: CompletionClient, items: list[Item]) -> list[str]:
        chats = [[{"role": "user", "content": item.prompt}] for item in items]
        # lm-eval stops at a blank line (the tasks' `until`): judge the same text here
        return [c.text.split("\n\n")[0] for c in client.complete_many(args.model, chats, MAX_TOKENS)]

    def sampled(items: list[Item]) -> list[list[str]]:
        tries = [answers(client, items) for client in sampling_clients]
        return [list(each) for each in zip(*tries, strict=True)]

    selected = select_answered(
        lambda items: answers(greedy_client, items),
        sampled,
        args.per_skill,
        allowed_misses=args.allowed_misses,
    )
    names = write_tasks(selected, args.out)
    print(f"wrote {', '.join(names)} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
