"""LWM's needle in a haystack: the haystack in the model's tokenizer, needles inserted at a depth
(backed off to a sentence end), LWM's prompt template, and its scoring.

    tok = load_tokenizer("tokenizer.model")
    hay = load_haystack(tok, "pg19.jsonl", tokens=131072)         # or None: RULER's noise sentences
    trial = lwm_trial(tok, hay, context_length=32768, depth_percent=50, round_index=0, seed=1234)
    trial.ids                # [1, ...] the prompt, <= 32768 - buffer tokens
    trial.needle_positions   # token index in trial.ids where each needle's '\\n' starts
    score(trial.answers, response)    # 1.0 when the 7-digit number is in the response

LWM (scripts/eval_needle.py) measured lengths with tiktoken; offline the model's own tokenizer is the
measure here, so "32K" means 32,768 of the model's tokens. The prompt is encoded in one call, as LWM
did, with one BOS (a literal `<s>` through `encode_prompt`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

from lwm_core.errors import LWMError
from lwm_core.text import Tokenizer
from lwm_core.text.tokenizer import SPACE

# LWM's list (scripts/eval_needle.py), 100 entries with repeats: a single needle's city is drawn from it
CITIES = (
    "Chicago", "Yangon", "Antananarivo", "Colombo", "Almaty", "Sydney", "Chicago", "Mexico City",
    "Seattle", "Lagos", "Amsterdam", "Belgrade", "Cairo", "Baghdad", "Damascus", "Kigali", "Dakar",
    "Dakar", "Sofia", "Kigali", "Victoria", "Tashkent", "Mumbai", "Barcelona", "Almaty", "Amman",
    "Toronto", "Bratislava", "Johannesburg", "Thimphu", "Bangkok", "Santiago", "Cairo", "San Francisco",
    "Lagos", "Amsterdam", "Paris", "Rabat", "Santiago", "Copenhagen", "Madrid", "Kigali",
    "Ho Chi Minh City", "Sarajevo", "Delhi", "Istanbul", "Ho Chi Minh City", "Khartoum", "Helsinki",
    "Doha", "Istanbul", "Kuala Lumpur", "Budapest", "Shanghai", "Moscow", "Los Angeles", "Oslo",
    "Johannesburg", "Berlin", "Bangalore", "Tokyo", "Melbourne", "Barcelona", "Chicago", "Port Louis",
    "Lisbon", "Nairobi", "Kampala", "Lima", "Maputo", "Vancouver", "Dubai", "Khartoum", "Jakarta",
    "Madrid", "Yerevan", "Beirut", "Athens", "Chicago", "Paris", "Bucharest", "Copenhagen", "Brussels",
    "Damascus", "Seattle", "Los Angeles", "Yerevan", "Victoria", "Tunis", "Astana", "Seoul",
    "Buenos Aires", "Bangkok", "Colombo", "Brussels", "Khartoum", "Doha", "San Francisco", "Vienna", "Jakarta",
)
NEEDLE = "\nThe special magic {city} number is: {number}\n"
QUESTION = "What is the special magic {city} number?"
MULTI_QUESTION = "What are the special magic numbers for {cities}?"
TEMPLATE = ("You are a helpful assistant. USER: {context} {question} Don't give information outside the document "
            "or repeat your findings. Keep your response short and direct. ASSISTANT: ")
SYSTEM_PREFIX = "<s>You are a helpful assistant. USER: "  # one BOS, then LWM's chat template
# RULER's noise haystack: the built-in haystack when no --haystack is given
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
BUFFER = 200  # LWM's final_context_length_buffer: tokens left for the answer


@dataclasses.dataclass(frozen=True)
class Haystack:
    """The haystack as token ids, long enough for every round of the largest context."""

    ids: np.ndarray  # [N] int32
    source: str  # a path, or "built-in" (RULER's noise sentences)
    repeats: int  # how many times the text was repeated to reach the asked length (1 = not)

    @property
    def repeated(self) -> bool:
        return self.repeats > 1

    def window(self, length: int, round_index: int) -> np.ndarray:
        """`length` tokens for round `round_index`: round i starts i x length tokens in (a different
        part of the haystack per round, as LWM), wrapping around a haystack that is too short."""
        start = (round_index * length) % len(self.ids)
        idx = (start + np.arange(length)) % len(self.ids)
        return self.ids[idx]


def _read_text(path: Path, field: str, chars: int) -> str:
    """Text of a .jsonl (the `field` of each line, concatenated as LWM does) or a plain text file,
    stopping once `chars` characters are read."""
    parts, total = [], 0
    with path.open(encoding="utf-8") as f:
        if path.suffix == ".jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)[field]
                except (ValueError, KeyError, TypeError):
                    raise LWMError(f"{path} line {n} is not a JSON object with a {field!r} string; a haystack "
                                   f"is jsonl lines like {{\"{field}\": \"...\"}} or a plain .txt file") from None
                parts.append(str(text))
                total += len(parts[-1])
                if total >= chars:
                    break
        else:
            parts.append(f.read(chars))
    return "".join(parts)


def load_haystack(tokenizer: Tokenizer, path: str | Path | None, tokens: int, *, field: str = "text") -> Haystack:
    """At least `tokens` tokens of haystack: `path` (jsonl `{"text": ...}` lines as PG-19, or text),
    else RULER's noise sentences. A text shorter than `tokens` is repeated (`Haystack.repeats`)."""
    if path is None:
        text, source = NOISE, "built-in"
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise LWMError(f"haystack {p} does not exist; pass a jsonl (one {{\"text\": ...}} per line) or .txt file")
        # ~4 characters a token in English; read a margin more, so one encode usually suffices
        text, source = _read_text(p, field, 6 * tokens + 1000), str(p)
        if not text.strip():
            raise LWMError(f"haystack {p} holds no text")
    ids = tokenizer.encode(text)
    repeats = 1
    if len(ids) < tokens:
        repeats = -(-tokens // max(len(ids), 1)) + 1
        ids = tokenizer.encode(" ".join([text] * repeats))
    return Haystack(np.asarray(ids, np.int32), source, repeats)


@lru_cache(maxsize=8)
def _sentence_end_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """Ids of the '.' pieces ('.' and '▁.'): LWM backs off to its tokenizer's '.' token."""
    return frozenset(i for i in range(tokenizer.vocab_size) if tokenizer.id_to_piece(i).lstrip(SPACE) == ".")


def insertion_point(tokenizer: Tokenizer, context: np.ndarray, depth_percent: float) -> int:
    """Where a needle goes in `context` [N] ids: `depth_percent` of the way in, moved back to just
    after the previous '.' token (LWM's rule; 0 when there is none); depth 100 is the end."""
    if depth_percent >= 100:
        return len(context)
    point = int(len(context) * depth_percent / 100)
    ends = _sentence_end_ids(tokenizer)
    while point > 0 and int(context[point - 1]) not in ends:
        point -= 1
    return point


@dataclasses.dataclass
class Trial:
    """One prompt of the grid, ready for the sampler."""

    ids: list[int]  # the whole prompt, BOS first
    needle_positions: list[int]  # token index in `ids` where each needle (in `keys` order) starts
    keys: list[str]  # every inserted needle's key, in insertion order
    answers: list[str]  # the values the question asks for
    question: str


def assemble(tokenizer: Tokenizer, window: np.ndarray, needles: list[str], depths: list[float],
             wrap: Callable[[str], str], target: int) -> tuple[list[int], list[int]]:
    """Insert `needles` into haystack `window` at `depths` (percent, one per needle) and wrap the
    context into the prompt text (`wrap(context)`, which starts with '<s>'); the context is cut so the
    prompt has at most `target` tokens. Returns (prompt ids, each needle's start position in the ids).

    The prompt is encoded in one call; a needle's position is the length of the encoding of the text
    before it (exact for needles that start with a character no piece merges across, as LWM's '\\n';
    otherwise within a token)."""
    overhead = len(tokenizer.encode_prompt(wrap(""))) + sum(len(tokenizer.encode(n)) for n in needles)
    budget = target - overhead
    shift = wrap("\x00").index("\x00")  # where the context starts inside the prompt text
    best = None  # (ids, full text, offsets) of the longest prompt found that fits
    for _ in range(8):  # re-encoding decoded slices shifts a few tokens: steer the budget to the target
        if budget < 1:
            raise LWMError(f"a prompt of {target} tokens leaves no room for the haystack after the template "
                           f"and needles ({overhead} tokens); ask for a longer context")
        context = window[:budget]
        points = [insertion_point(tokenizer, context, d) for d in depths]
        order = sorted(range(len(needles)), key=lambda j: (points[j], j))
        pieces, offsets, start = [], {}, 0
        for j in order:
            pieces.append(tokenizer.decode(context[start:points[j]]))
            offsets[j] = sum(len(p) for p in pieces)
            pieces.append(needles[j])
            start = points[j]
        pieces.append(tokenizer.decode(context[start:]))
        full = wrap("".join(pieces))
        ids = tokenizer.encode_prompt(full)
        if len(ids) <= target and (best is None or len(ids) > len(best[0])):
            best = (ids, full, offsets)
        if len(ids) == target or budget >= len(window) and len(ids) < target:
            break
        budget = min(budget + target - len(ids), len(window))
    if best is None:
        raise LWMError(f"could not fit the prompt in {target} tokens (the haystack re-encodes longer); "
                       "report this with the haystack file")
    ids, full, offsets = best
    return ids, [len(tokenizer.encode_prompt(full[:shift + offsets[j]])) for j in range(len(needles))]


def needle_depths(depth_percent: float, count: int) -> list[float]:
    """Distinct depths for `count` needles: the first at `depth_percent`, the others spread evenly
    around the document from there (100 / count apart)."""
    return [depth_percent] + [(depth_percent + 100 * j / count) % 100 for j in range(1, count)]


def trial_rng(seed: int, *parts: int) -> np.random.Generator:
    """A generator for one trial, from the seed and the trial's coordinates: a resumed or partial
    run draws the same needles as a full one."""
    return np.random.default_rng([seed, *[int(p) for p in parts]])


def lwm_trial(tokenizer: Tokenizer, haystack: Haystack, *, context_length: int, depth_percent: float,
              round_index: int, seed: int = 1234, needles: int = 1, retrieve: int = 1,
              buffer: int = BUFFER) -> Trial:
    """LWM's trial: `needles` needles `\\nThe special magic {city} number is: {7 digits}\\n` with
    distinct cities at distinct depths (the first at `depth_percent`), asking for `retrieve` of them;
    the prompt holds at most `context_length - buffer` tokens."""
    if not 1 <= retrieve <= needles:
        raise LWMError(f"--retrieve must be between 1 and --needles ({needles}), got {retrieve}")
    unique = sorted(set(CITIES))
    if needles > len(unique):
        raise LWMError(f"at most {len(unique)} needles (distinct cities), got {needles}")
    rng = trial_rng(seed, context_length, round(depth_percent * 1000), round_index, needles)
    if needles == 1:
        cities = [str(rng.choice(CITIES))]  # LWM draws from its list, repeats and all
    else:
        cities = [unique[i] for i in rng.choice(len(unique), needles, replace=False)]
    numbers = [str(n) for n in rng.integers(1_000_000, 10_000_000, needles)]
    asked = sorted(rng.choice(needles, retrieve, replace=False).tolist()) if needles > 1 else [0]
    if retrieve == 1:
        question = QUESTION.format(city=cities[asked[0]])
    else:
        question = MULTI_QUESTION.format(cities=", ".join(cities[i] for i in asked))
    texts = [NEEDLE.format(city=c, number=n) for c, n in zip(cities, numbers, strict=True)]
    wrap = lambda context: "<s>" + TEMPLATE.format(context=context, question=question)  # starts SYSTEM_PREFIX
    ids, positions = assemble(tokenizer, haystack.window(context_length, round_index), texts,
                              needle_depths(depth_percent, needles), wrap, context_length - buffer)
    return Trial(ids, positions, cities, [numbers[i] for i in asked], question)


def score(answers: list[str], response: str) -> float:
    """LWM's score: the fraction of the asked numbers that appear in the response (1 needle: 0 or 1)."""
    return sum(a in response for a in answers) / len(answers)
