"""Words about the shapes world: questions and answers, captions, generation prompts, a text corpus
and needle documents. The phrasing is fixed (issue 12); evaluations score a reply by `score_reply`.

    qas = questions(scene)            # [QA(kind='colour', question='What colour is the square?', answer='Red.'), ...]
    caption(scene)                    # 'a red square moving left and a blue circle'
    corpus_document(seed)             # a caption, description, story or Q&A text of a random scene
    needle_document(seed, 2000, 50)   # a haystack of shapes stories with LWM's needle at 50% depth
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

from lwm_core.data.shapes import (
    COLOURS, MOVES, SHAPES, SPLIT_SIZE, SPLITS, Scene, Shape, random_scene, random_shape, split_of,
)
from lwm_core.errors import LWMError

COUNT_WORDS = ("one", "two", "three")
QUESTION_KINDS = ("colour", "shape", "direction", "count", "first", "end")

# LWM's needle protocol (scripts/eval_needle.py): the sentence, the question and the prompt template.
NEEDLE = "\nThe special magic {city} number is: {number}\n"
NEEDLE_QUESTION = "What is the special magic {city} number?"
NEEDLE_INSTRUCTION = ("Don't give information outside the document or repeat your findings. "
                      "Keep your response short and direct.")
NEEDLE_TEMPLATE = "You are a helpful assistant. USER: {context} {question} " + NEEDLE_INSTRUCTION + " ASSISTANT: "
# LWM's RANDOM_NEEDLE_CITIES, repeats included (they weight the draw as in LWM).
NEEDLE_CITIES = (
    "Chicago", "Yangon", "Antananarivo", "Colombo", "Almaty", "Sydney", "Chicago", "Mexico City", "Seattle", "Lagos",
    "Amsterdam", "Belgrade", "Cairo", "Baghdad", "Damascus", "Kigali", "Dakar", "Dakar", "Sofia", "Kigali",
    "Victoria", "Tashkent", "Mumbai", "Barcelona", "Almaty", "Amman", "Toronto", "Bratislava", "Johannesburg",
    "Thimphu", "Bangkok", "Santiago", "Cairo", "San Francisco", "Lagos", "Amsterdam", "Paris", "Rabat", "Santiago",
    "Copenhagen", "Madrid", "Kigali", "Ho Chi Minh City", "Sarajevo", "Delhi", "Istanbul", "Ho Chi Minh City",
    "Khartoum", "Helsinki", "Doha", "Istanbul", "Kuala Lumpur", "Budapest", "Shanghai", "Moscow", "Los Angeles",
    "Oslo", "Johannesburg", "Berlin", "Bangalore", "Tokyo", "Melbourne", "Barcelona", "Chicago", "Port Louis",
    "Lisbon", "Nairobi", "Kampala", "Lima", "Maputo", "Vancouver", "Dubai", "Khartoum", "Jakarta", "Madrid",
    "Yerevan", "Beirut", "Athens", "Chicago", "Paris", "Bucharest", "Copenhagen", "Brussels", "Damascus", "Seattle",
    "Los Angeles", "Yerevan", "Victoria", "Tunis", "Astana", "Seoul", "Buenos Aires", "Bangkok", "Colombo",
    "Brussels", "Khartoum", "Doha", "San Francisco", "Vienna", "Jakarta",
)


@dataclasses.dataclass(frozen=True)
class QA:
    """A question about a scene with its answer. A reply is right when it holds every `accept`
    entry as whole words ('two|2': either) and none of the `reject` words (the other answers of the
    same kind, so listing every colour does not pass)."""

    kind: str
    question: str
    answer: str
    accept: tuple[str, ...]
    reject: tuple[str, ...] = ()


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _has(words: list[str], phrase: str) -> bool:
    target = phrase.split()
    return any(words[i:i + len(target)] == target for i in range(len(words) - len(target) + 1))


def score_reply(reply: str, qa: QA) -> bool:
    """Whether `reply` answers `qa` (case-insensitive, whole words)."""
    words = _words(reply)
    ok = all(any(_has(words, alt) for alt in entry.split("|")) for entry in qa.accept)
    return ok and not any(_has(words, bad) for bad in qa.reject)


def direction_answer(direction: str) -> str:
    return "It does not move." if direction == "none" else f"It moves {direction}."


def questions(scene: Scene) -> list[QA]:
    """Every question with a single right answer for this scene, in QUESTION_KINDS order: colour of a
    shape kind that occurs once, shape of each colour, direction of each shape seen in every frame
    (videos only), count (when no shape enters or leaves), and for clips with events 'Which shape
    appears first?' (when one shape alone opens the clip) and 'What happens at the end?' (when one
    event alone is last)."""
    shapes, t = scene.shapes, scene.num_frames
    out: list[QA] = []
    kinds = [s.shape for s in shapes]
    for s in shapes:
        if kinds.count(s.shape) == 1:
            out.append(QA("colour", f"What colour is the {s.shape}?", f"{s.colour.capitalize()}.", (s.colour,),
                          tuple(c for c in COLOURS if c != s.colour)))
    for s in shapes:  # colours are distinct within a scene
        out.append(QA("shape", f"What shape is the {s.colour} object?", f"A {s.shape}.", (s.shape,),
                      tuple(k for k in SHAPES if k != s.shape)))
    if t > 1:
        for s in shapes:
            if len(s.frames_visible(t)) == t:
                accept = ("does not move",) if s.direction == "none" else (s.direction,)
                reject = tuple(m for m in MOVES if m != s.direction)
                out.append(QA("direction", f"Which way does the {s.name} move?", direction_answer(s.direction),
                              accept, reject))
    events = scene.events()
    if not events:
        n = len(shapes)
        out.append(QA("count", "How many shapes are there?", f"{COUNT_WORDS[n - 1].capitalize()}.",
                      (f"{COUNT_WORDS[n - 1]}|{n}",),
                      tuple(w for i, w in enumerate(COUNT_WORDS) if i != n - 1)))
        return out
    first = min(s.appear for s in shapes)
    openers = [s for s in shapes if s.appear == first]
    if len(openers) == 1 and any(s.appear > first for s in shapes):
        s = openers[0]
        out.append(QA("first", "Which shape appears first?", f"The {s.name}.", (s.colour, s.shape),
                      _other_names(scene, s)))
    last = [e for e in events if e[0] == events[-1][0]]
    if len(last) == 1:
        _, verb, s = last[0]
        other = "leaves" if verb == "appears" else "appears"
        out.append(QA("end", "What happens at the end?", f"The {s.name} {verb}.", (s.colour, s.shape, verb),
                      (other,) + _other_names(scene, s)))
    return out


def _other_names(scene: Scene, shape: Shape) -> tuple[str, ...]:
    return tuple(s.colour for s in scene.shapes if s is not shape)


def shape_phrase(shape: Shape, num_frames: int) -> str:
    """'a red square' (still, or an image) or 'a red square moving left'."""
    base = f"a {shape.name}"
    return f"{base} moving {shape.direction}" if num_frames > 1 and shape.moves else base


def caption(scene: Scene) -> str:
    """One line naming every shape in draw order, with motion and events: 'a red square moving left,
    a green circle and a white triangle', '..., then the blue circle appears'."""
    parts = [shape_phrase(s, scene.num_frames) for s in scene.shapes]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    for _, verb, s in scene.events():
        text += f", then the {s.name} {verb}"
    return text


def generation_prompt(scene: Scene) -> str | None:
    """'a {colour} {shape}' (image, or a still video) or 'a {colour} {shape} moving {direction}'
    (video), for a single shape without events; None for other scenes."""
    if len(scene.shapes) != 1 or scene.events():
        return None
    return shape_phrase(scene.shapes[0], scene.num_frames)


def prompt_scene(prompt: str, seed: int = 0, num_frames: int = 1) -> Scene:
    """The scene a generation prompt asks for (size and place drawn from `seed`): what the pixel
    checker compares a generated image or video with. LWMError for any other phrasing."""
    m = re.fullmatch(r"an? (\w+) (\w+)(?: moving (\w+))?", prompt.strip().lower())
    if not m or m[1] not in COLOURS or m[2] not in SHAPES or (m[3] and m[3] not in MOVES):
        raise LWMError(f"{prompt!r} is not a shapes prompt; write 'a <colour> <shape>' or "
                       f"'a <colour> <shape> moving <left|right|up|down>'")
    if m[3] and num_frames < 2:
        raise LWMError(f"{prompt!r} moves: it needs a video (num_frames >= 2)")
    shape = random_shape(np.random.default_rng([seed, 3]), m[1], m[2], m[3] or "none")
    return Scene((shape,), num_frames, seed)


def _position(shape: Shape) -> str:
    """'the top left', 'the bottom', 'the middle', ... of the shape's first place."""
    col = "left" if shape.x < 1 / 3 else "right" if shape.x > 2 / 3 else ""
    row = "top" if shape.y < 1 / 3 else "bottom" if shape.y > 2 / 3 else ""
    return "the " + (" ".join(w for w in (row, col) if w) or "middle")


def _overlaps(scene: Scene) -> list[tuple[Shape, Shape]]:
    """(behind, in front) pairs that share pixels in some frame."""
    masks = scene.masks(32)
    return [(scene.shapes[i], scene.shapes[j]) for i in range(len(masks)) for j in range(i + 1, len(masks))
            if (masks[i] & masks[j]).any()]


def description(scene: Scene) -> str:
    """A few plain sentences: what is there, where it starts, how it moves, what covers what."""
    n = len(scene.shapes)
    kind = "picture" if scene.num_frames == 1 else "video"
    parts = [f"The {kind} shows {COUNT_WORDS[n - 1]} shape{'s' if n > 1 else ''} on a black background."]
    for s in scene.shapes:
        parts.append(f"The {s.name} starts at {_position(s)}." if scene.num_frames > 1
                     else f"The {s.name} is at {_position(s)}.")
        if scene.num_frames > 1:
            parts.append(f"The {s.name} {'moves ' + s.direction if s.moves else 'does not move'}.")
    for _, verb, s in scene.events():
        parts.append(f"Later the {s.name} {verb}.")
    for behind, front in _overlaps(scene):
        parts.append(f"The {front.name} is in front of the {behind.name}.")
    return " ".join(parts)


_OPENINGS = ("Once upon a time", "One day", "In a dark room", "On a black screen", "Long ago")


def story(scene: Scene, rng: np.random.Generator) -> str:
    """A short story told from the scene (phrasing varied by `rng`)."""
    first, *rest = scene.shapes
    opening = _OPENINGS[int(rng.integers(len(_OPENINGS)))]
    lines = [f"{opening}, there was a {first.name}."]
    verbs = {"none": "stayed where it was", "left": "slid to the left", "right": "slid to the right",
             "up": "rose up", "down": "fell down"}
    for s in rest:
        lines.append(f"Next to it there was a {s.name}." if s.appear == 0 else f"Then a {s.name} appeared.")
    if scene.num_frames > 1:
        for s in scene.shapes:
            lines.append(f"The {s.name} {verbs[s.direction if s.moves else 'none']}.")
    for _, verb, s in scene.events():
        if verb == "leaves":
            lines.append(f"Then the {s.name} went away.")
    ending = ("That was the end.", "And that is all.", "The screen stayed black around them.")
    lines.append(ending[int(rng.integers(len(ending)))])
    return " ".join(lines)


def qa_text(scene: Scene) -> str:
    """The scene's description followed by its questions and answers, as plain text."""
    return description(scene) + "".join(f"\nQ: {qa.question}\nA: {qa.answer}" for qa in questions(scene))


CORPUS_FORMS = ("caption", "description", "story", "qa")


def corpus_document(seed: int, form: str | None = None) -> str:
    """One text document of the world from a seed: a caption, description, story or Q&A text of a
    random scene (image or video)."""
    rng = np.random.default_rng([seed, 1])  # a stream apart from the scene's own seed
    form = CORPUS_FORMS[int(rng.integers(len(CORPUS_FORMS)))] if form is None else form
    if form not in CORPUS_FORMS:
        raise LWMError(f"unknown corpus form {form!r}; choose from {', '.join(CORPUS_FORMS)}")
    scene = random_scene(seed, 1 if rng.random() < 0.3 else 8)
    if form == "caption":
        return caption(scene).capitalize() + "."
    if form == "description":
        return description(scene)
    if form == "story":
        return story(scene, rng)
    return qa_text(scene)


@dataclasses.dataclass(frozen=True)
class NeedleDocument:
    """A haystack with one needle. `prompt` is LWM's needle prompt; the reply is right when it holds
    `number`."""

    context: str
    question: str
    city: str
    number: str
    depth_percent: float
    length: int  # the haystack's length as counted (needle excluded)

    @property
    def prompt(self) -> str:
        return NEEDLE_TEMPLATE.format(context=self.context, question=self.question)

    @property
    def answer(self) -> str:
        return NEEDLE.format(city=self.city, number=self.number).strip()

    def conversation(self) -> list[dict[str, str]]:
        """As a one-turn chat (`fields: conversations`): in LWM's chat template it reads as the needle
        prompt followed by the answer sentence."""
        return [{"from": "human", "value": f"{self.context} {self.question} {NEEDLE_INSTRUCTION}"},
                {"from": "gpt", "value": self.answer}]


def needle_document(seed: int, length: int, depth_percent: float,
                    count: Callable[[str], int] | None = None) -> NeedleDocument:
    """A haystack of this world's stories and descriptions about `length` long (measured by `count`,
    e.g. a tokenizer's token count; default: words), with LWM's needle at `depth_percent` backed off
    to the previous sentence end (100: at the very end). City and 7-digit number drawn from `seed`."""
    if length <= 0:
        raise LWMError(f"needle haystack length must be positive, got {length}")
    if not 0 <= depth_percent <= 100:
        raise LWMError(f"depth_percent must be within 0..100, got {depth_percent}")
    count = count or (lambda text: len(text.split()))
    rng = np.random.default_rng([seed, 2])
    start = SPLITS[split_of(seed)] if 0 <= seed < len(SPLITS) * SPLIT_SIZE else 0
    pieces, total = [], 0
    while total < length:  # the haystack's scenes come from the needle seed's own split
        form = ("description", "story")[int(rng.integers(2))]
        text = corpus_document(start + int(rng.integers(SPLIT_SIZE)), form)
        pieces.append(text)
        total += count(text + " ")
    haystack = " ".join(pieces)
    city = NEEDLE_CITIES[int(rng.integers(len(NEEDLE_CITIES)))]
    number = str(int(rng.integers(1_000_000, 10_000_000)))
    needle = NEEDLE.format(city=city, number=number)
    if depth_percent >= 100:
        context = haystack + needle
    else:
        cut = int(len(haystack) * depth_percent / 100)
        cut = haystack.rfind(".", 0, cut) + 1  # back off to the previous sentence end (0: the start)
        context = haystack[:cut] + needle + haystack[cut:]
    return NeedleDocument(context, NEEDLE_QUESTION.format(city=city), city, number, float(depth_percent), total)
