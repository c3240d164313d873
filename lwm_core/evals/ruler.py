"""RULER's needle-in-a-haystack family (NVIDIA RULER, `synthetic/niah`) and its string-match-all score.

    trial = ruler_trial("multikey_2", tok, hay, context_length=4096, depth_percent=50, round_index=0)
    string_match_all(trial.answers, "The special magic numbers ... are 1234567.")   # 0..1

Each task is a haystack kind, a key kind and a value kind, and how many needles:

| task        | haystack | keys  | values  | needles                                   |
| single_1    | noise    | words | numbers | 1                                         |
| single_2    | essay    | words | numbers | 1                                         |
| single_3    | essay    | words | uuids   | 1                                         |
| multikey_1  | essay    | words | numbers | 1 asked + 3 with other keys               |
| multikey_2  | needles  | words | numbers | the haystack is needles with other keys   |
| multikey_3  | needles  | uuids | uuids   | the same, uuid keys and values            |
| multivalue  | essay    | words | numbers | 4 values for the one key asked            |
| multiquery  | essay    | words | numbers | 4 keys asked at once                      |

RULER's essays are Paul Graham's; here the essay haystack is the user's `--haystack` (the noise
sentences when there is none, and the runner says so). The prompt is RULER's niah template inside
LWM's chat template, ending with RULER's answer prefix, so the model continues the answer.
"""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np

from lwm_core.errors import LWMError
from lwm_core.evals.needle import BUFFER, SYSTEM_PREFIX, Haystack, Trial, assemble, needle_depths, trial_rng
from lwm_core.text import Tokenizer

NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
TEMPLATE = ("Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
            "I will quiz you about the {type_v} afterwards.\n{context}\n"
            "What are all the special magic {type_v} for {query} mentioned in the provided text?")
ANSWER_PREFIX = "The special magic {type_v} for {query} mentioned in the provided text are"

# word keys as RULER's: an adjective-noun pair
_ADJECTIVES = ("abundant", "brave", "calm", "damp", "eager", "fancy", "gentle", "hollow", "icy", "jolly",
               "keen", "lively", "mellow", "narrow", "odd", "plain", "quiet", "rapid", "shiny", "tidy",
               "upbeat", "vivid", "wary", "young", "zesty", "bold", "crisp", "dusty", "early", "fuzzy")
_NOUNS = ("apple", "bridge", "cake", "desk", "engine", "forest", "garden", "harbor", "island", "jacket",
          "kettle", "ladder", "mirror", "needle", "orchard", "pencil", "quilt", "river", "saddle", "tunnel",
          "umbrella", "valley", "wagon", "yard", "zipper", "anchor", "basket", "candle", "drum", "feather")


@dataclasses.dataclass(frozen=True)
class RulerTask:
    haystack: str  # "noise", "essay" or "needles"
    keys: str  # "words" or "uuids"
    values: str  # "numbers" or "uuids"
    num_keys: int = 1  # needles with distinct keys (the first is asked; the rest distract)
    num_values: int = 1  # values per asked key
    num_queries: int = 1  # keys asked at once


TASKS: dict[str, RulerTask] = {
    "single_1": RulerTask("noise", "words", "numbers"),
    "single_2": RulerTask("essay", "words", "numbers"),
    "single_3": RulerTask("essay", "words", "uuids"),
    "multikey_1": RulerTask("essay", "words", "numbers", num_keys=4),
    "multikey_2": RulerTask("needles", "words", "numbers"),
    "multikey_3": RulerTask("needles", "uuids", "uuids"),
    "multivalue": RulerTask("essay", "words", "numbers", num_values=4),
    "multiquery": RulerTask("essay", "words", "numbers", num_queries=4),
}


def ruler_task(name: str) -> RulerTask:
    key = name.lower().removeprefix("niah_")
    if key not in TASKS:
        raise LWMError(f"unknown RULER task {name!r}; choose from {', '.join(TASKS)} (or 'lwm' for LWM's needle)")
    return TASKS[key]


def _draw_keys(rng: np.random.Generator, kind: str, count: int) -> list[str]:
    if kind == "uuids":
        return [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(count)]
    pairs = rng.choice(len(_ADJECTIVES) * len(_NOUNS), count, replace=False)  # distinct keys
    return [f"{_ADJECTIVES[p // len(_NOUNS)]}-{_NOUNS[p % len(_NOUNS)]}" for p in pairs]


def _draw_values(rng: np.random.Generator, kind: str, count: int) -> list[str]:
    if kind == "uuids":
        return [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(count)]
    return [str(n) for n in rng.integers(1_000_000, 10_000_000, count)]


def _needle_haystack(tokenizer: Tokenizer, rng: np.random.Generator, task: RulerTask, length: int,
                     taken: set[str]) -> np.ndarray:
    """multikey_2/3's haystack: needles with other keys and values, as many as fill `length` tokens."""
    type_v = task.values
    one = len(tokenizer.encode(NEEDLE.format(type_v=type_v, key=_draw_keys(rng, task.keys, 1)[0],
                                             value=_draw_values(rng, task.values, 1)[0])))
    count = length // max(one, 1) + 2
    pool = _draw_keys(rng, task.keys, min(count + len(taken), 900) if task.keys == "words" else count)
    keys = [k for k in pool if k not in taken]  # never the asked keys
    keys = (keys * (count // len(keys) + 1))[:count]  # 900 word pairs can run out: distractors repeat
    values = _draw_values(rng, task.values, count)
    text = " ".join(NEEDLE.format(type_v=type_v, key=k, value=v) for k, v in zip(keys, values, strict=True))
    return np.asarray(tokenizer.encode(text), np.int32)[:length]


def ruler_trial(name: str, tokenizer: Tokenizer, haystack: Haystack, *, context_length: int,
                depth_percent: float, round_index: int, seed: int = 1234, buffer: int = BUFFER) -> Trial:
    """One trial of RULER task `name`: the prompt (at most `context_length - buffer` tokens) ends with
    RULER's answer prefix; `answers` are the values every one of which the response should hold."""
    task = ruler_task(name)
    rng = trial_rng(seed, context_length, round(depth_percent * 1000), round_index,
                    100 + list(TASKS).index(name.lower().removeprefix("niah_")))
    n_keys = max(task.num_keys, task.num_queries)
    keys = _draw_keys(rng, task.keys, n_keys)
    type_v = task.values
    needles, owners, answers = [], [], []
    for i, key in enumerate(keys):
        values = _draw_values(rng, task.values, task.num_values)
        needles += [NEEDLE.format(type_v=type_v, key=key, value=v) for v in values]
        owners += [key] * len(values)
        if i < task.num_queries:
            answers += values
    asked = keys[:task.num_queries]
    query = asked[0] if len(asked) == 1 else ", ".join(asked[:-1]) + ", and " + asked[-1]
    if task.haystack == "needles":
        window = _needle_haystack(tokenizer, rng, task, context_length, set(keys))
    else:
        window = haystack.window(context_length, round_index)
    # RULER puts a leading space between needle and haystack sentences
    texts = [" " + n + " " for n in needles]
    prompt = TEMPLATE.format(type_v=type_v, context="{context}", query=query)
    prefix = ANSWER_PREFIX.format(type_v=type_v, query=query)
    wrap = lambda context: SYSTEM_PREFIX + prompt.replace("{context}", context) + " ASSISTANT: " + prefix
    ids, positions = assemble(tokenizer, window, texts, needle_depths(depth_percent, len(texts)), wrap,
                              context_length - buffer)
    return Trial(ids, positions, owners, answers, TEMPLATE.split("\n")[-1].format(type_v=type_v, query=query))


def string_match_all(answers: list[str], response: str) -> float:
    """RULER's string_match_all: the fraction of expected values found in the response, case-insensitive
    (RULER reports it x100)."""
    text = response.lower()
    return sum(a.lower() in text for a in answers) / len(answers)
