"""The shapes world: rendering, scene sampling, splits, the fixed QA phrasing, captions, corpus, needles."""

import numpy as np
import pytest

from lwm_core.data.shapes import (
    COLOURS, MIN_VISIBLE, SPLIT_SIZE, Scene, Shape, random_scene, scene_seed, split_of,
)
from lwm_core.data.shapes_text import (
    NEEDLE_CITIES, QA, caption, corpus_document, generation_prompt, needle_document, prompt_scene, questions,
    score_reply,
)
from lwm_core.errors import LWMError

PALETTE = {(0, 0, 0)} | set(COLOURS.values())


def _centroid(mask):  # [H, W] bool -> (x, y) in pixels
    ys, xs = np.nonzero(mask)
    return xs.mean() + 0.5, ys.mean() + 0.5


def test_same_seed_same_scene_and_frames():
    a, b = random_scene(123, 8), random_scene(123, 8)
    assert a == b
    np.testing.assert_array_equal(a.render(40), b.render(40))
    assert random_scene(124, 8) != a


def test_render_areas_colours_and_bounding_boxes():
    side = 200  # big enough that rasterised areas are close to the formulas
    for kind, fill in (("square", 1.0), ("circle", np.pi / 4), ("triangle", 0.5)):
        scene = Scene((Shape("yellow", kind, 0.3, 0.5, 0.5),))
        frame = scene.render(side)[0]
        assert {tuple(p) for p in frame.reshape(-1, 3)} == {(0, 0, 0), (255, 255, 0)}
        mask = frame.any(axis=-1)
        box = 0.3 * side  # 60 pixels
        assert mask.sum() == pytest.approx(fill * box * box, rel=0.03)
        ys, xs = np.nonzero(mask)
        assert xs.max() - xs.min() + 1 == pytest.approx(box, abs=1)
        assert ys.max() - ys.min() + 1 == pytest.approx(box, abs=1)
        assert _centroid(mask)[0] == pytest.approx(100, abs=0.5)
    # the triangle points up: its top rows are narrow, its bottom rows wide
    tri = Scene((Shape("red", "triangle", 0.3, 0.5, 0.5),)).render(side)[0].any(axis=-1)
    rows = tri.sum(axis=1)[rows_nz := np.nonzero(tri.sum(axis=1))[0]]
    assert rows[0] < 5 and rows[-1] > 55 and rows_nz.size > 55


def test_draw_order_is_occlusion():
    back = Shape("red", "square", 0.3, 0.45, 0.5)
    front = Shape("blue", "circle", 0.3, 0.55, 0.5)
    frame = Scene((back, front)).render(100)[0]
    assert tuple(frame[50, 55]) == COLOURS["blue"]  # inside both: the later shape shows
    assert tuple(frame[50, 32]) == COLOURS["red"]
    frame = Scene((front, back)).render(100)[0]
    assert tuple(frame[50, 55]) == COLOURS["red"]


def test_non_square_frames_show_the_square_render_in_the_middle():
    scene = random_scene(7, 4)
    np.testing.assert_array_equal(scene.render((48, 80))[:, :, 16:64], scene.render(48))
    assert not scene.render((48, 80))[:, :, :16].any() and not scene.render((48, 80))[:, :, 64:].any()
    np.testing.assert_array_equal(scene.render((90, 60))[:, 15:75], scene.render(60))


def test_motion_moves_the_centroid_by_travel():
    side = 100
    for direction, (sx, sy) in {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}.items():
        shape = Shape("green", "square", 0.2, 0.5, 0.5, direction, 0.3)
        masks = Scene((shape,), 5).masks(side)[0]  # [5, H, W]
        (x0, y0), (x1, y1) = _centroid(masks[0]), _centroid(masks[-1])
        assert (x1 - x0, y1 - y0) == (pytest.approx(sx * 30, abs=1), pytest.approx(sy * 30, abs=1))
        xm, _ = _centroid(masks[2])  # constant speed: halfway at the middle frame
        assert xm - x0 == pytest.approx(sx * 15, abs=1)


def test_random_scenes_follow_the_world_rules():
    for seed in range(150):
        scene = random_scene(seed, 8)
        shapes = scene.shapes
        assert 1 <= len(shapes) <= 3
        assert len({s.colour for s in shapes}) == len(shapes)  # colours name shapes uniquely
        for s in shapes:
            assert 0.1 <= s.size <= 1 / 3
            for t in (0, scene.num_frames - 1):  # the box stays in the frame all along
                cx, cy = s.centre(t, scene.num_frames)
                assert s.size / 2 - 1e-9 <= cx <= 1 - s.size / 2 + 1e-9
                assert s.size / 2 - 1e-9 <= cy <= 1 - s.size / 2 + 1e-9
        fractions = scene.visible_fractions(64)
        assert np.all(np.isnan(fractions) | (fractions >= MIN_VISIBLE))
        assert {tuple(p) for p in scene.render(32).reshape(-1, 3)} <= PALETTE
    images = [random_scene(seed, 1) for seed in range(50)]
    assert all(not s.moves and not scene.events() for scene in images for s in scene.shapes)


def test_events_enter_and_leave():
    scene = random_scene(5, 8, num_shapes=3, event="enter")
    masks = scene.masks(32)
    appear = sorted(s.appear for s in scene.shapes)
    assert appear[0] == 0 and len(set(appear)) == 3 and appear[-1] <= 6  # seen in >= 2 frames
    for s, m in zip(scene.shapes, masks, strict=True):
        present = m.any(axis=(1, 2))
        assert list(present) == [s.appear <= t for t in range(8)]
    scene = random_scene(6, 8, num_shapes=2, event="leave")
    (frame, verb, shape), = scene.events()
    assert verb == "leaves" and 2 <= frame <= 7
    i = scene.shapes.index(shape)
    assert list(scene.masks(32)[i].any(axis=(1, 2))) == [t < frame for t in range(8)]
    with pytest.raises(LWMError, match="two shapes"):
        random_scene(1, 8, num_shapes=1, event="enter")
    with pytest.raises(LWMError, match="at least 4 frames"):
        random_scene(1, 3, num_shapes=3, event="enter")
    with pytest.raises(LWMError, match="unknown event"):
        random_scene(1, 8, event="explode")


def test_splits_are_disjoint_seed_ranges():
    assert scene_seed("train", 0) == 0 and scene_seed("validation", 0) == SPLIT_SIZE
    assert scene_seed("test", 5) == 2 * SPLIT_SIZE + 5
    assert split_of(scene_seed("validation", SPLIT_SIZE - 1)) == "validation"
    assert split_of(scene_seed("test", 0)) == "test"
    with pytest.raises(LWMError, match="unknown split"):
        scene_seed("dev", 0)
    with pytest.raises(LWMError, match="outside"):
        scene_seed("train", SPLIT_SIZE)


def test_scene_dict_round_trip():
    scene = random_scene(11, 8)
    assert Scene.from_dict(scene.to_dict()) == scene


RED_LEFT = Shape("red", "square", 0.2, 0.6, 0.3, "left", 0.3)
BLUE_STILL = Shape("blue", "circle", 0.2, 0.3, 0.8)
GREEN_TRI = Shape("green", "triangle", 0.2, 0.8, 0.8, "up", 0.3)


def test_questions_of_a_video_in_the_fixed_phrasing():
    scene = Scene((RED_LEFT, BLUE_STILL), 8)
    got = [(q.kind, q.question, q.answer) for q in questions(scene)]
    assert got == [
        ("colour", "What colour is the square?", "Red."),
        ("colour", "What colour is the circle?", "Blue."),
        ("shape", "What shape is the red object?", "A square."),
        ("shape", "What shape is the blue object?", "A circle."),
        ("direction", "Which way does the red square move?", "It moves left."),
        ("direction", "Which way does the blue circle move?", "It does not move."),
        ("count", "How many shapes are there?", "Two."),
    ]
    # a shape kind seen twice has no colour question; an image has no direction questions
    two_squares = Scene((RED_LEFT, Shape("white", "square", 0.2, 0.2, 0.8)), 1)
    kinds = [q.question for q in questions(two_squares)]
    assert "What colour is the square?" not in kinds and not any("move" in k for k in kinds)


def test_event_questions_first_and_end():
    scene = Scene((RED_LEFT, Shape("blue", "circle", 0.2, 0.3, 0.8, appear=3)), 8)
    got = {q.kind: (q.question, q.answer) for q in questions(scene)}
    assert got["first"] == ("Which shape appears first?", "The red square.")
    assert got["end"] == ("What happens at the end?", "The blue circle appears.")
    assert "count" not in got  # ambiguous while a shape is missing from some frames
    assert "Which way does the blue circle move?" not in [q.question for q in questions(scene)]
    scene = Scene((RED_LEFT, Shape("blue", "circle", 0.2, 0.3, 0.8, leave=5)), 8)
    got = {q.kind: (q.question, q.answer) for q in questions(scene)}
    assert got["end"] == ("What happens at the end?", "The blue circle leaves.")
    assert "first" not in got  # both open the clip


def test_score_reply_whole_words_and_competitors():
    count = QA("count", "How many shapes are there?", "Two.", ("two|2",), ("one", "three"))
    assert score_reply("Two.", count) and score_reply("There are 2 shapes", count)
    assert not score_reply("Two or three.", count) and not score_reply("twenty", count)
    still = next(q for q in questions(Scene((BLUE_STILL,), 8)) if q.kind == "direction")
    assert score_reply("It does not move.", still) and not score_reply("It moves up.", still)
    left = next(q for q in questions(Scene((RED_LEFT,), 8)) if q.kind == "direction")
    assert score_reply("left", left) and not score_reply("It moves left, then right.", left)
    colour = next(q for q in questions(Scene((RED_LEFT,), 8)) if q.kind == "colour")
    assert score_reply("RED!", colour) and not score_reply("red green blue yellow white", colour)


def test_captions_and_generation_prompts():
    assert caption(Scene((RED_LEFT, BLUE_STILL, GREEN_TRI), 8)) == (
        "a red square moving left, a blue circle and a green triangle moving up")
    assert caption(Scene((RED_LEFT,), 1)) == "a red square"  # images do not move
    assert caption(Scene((RED_LEFT, Shape("blue", "circle", 0.2, 0.3, 0.8, leave=4)), 8)) == (
        "a red square moving left and a blue circle, then the blue circle leaves")
    assert generation_prompt(Scene((GREEN_TRI,), 1)) == "a green triangle"
    assert generation_prompt(Scene((GREEN_TRI,), 8)) == "a green triangle moving up"
    assert generation_prompt(Scene((GREEN_TRI, BLUE_STILL), 8)) is None


def test_prompt_scene_parses_prompts_and_refuses_others():
    scene = prompt_scene("a yellow triangle moving down", seed=3, num_frames=6)
    (s,) = scene.shapes
    assert (s.colour, s.shape, s.direction, scene.num_frames) == ("yellow", "triangle", "down", 6)
    assert s.travel > 0 and s.y + s.size / 2 + s.travel <= 1 + 1e-9
    assert prompt_scene("A White Circle", seed=1).shapes[0].direction == "none"
    for bad in ("a purple square", "a red hexagon", "a red square moving sideways", "two red squares"):
        with pytest.raises(LWMError, match="not a shapes prompt"):
            prompt_scene(bad)
    with pytest.raises(LWMError, match="needs a video"):
        prompt_scene("a red square moving left", num_frames=1)


def test_corpus_documents_are_reproducible_world_text():
    docs = [corpus_document(seed) for seed in range(40)]
    assert docs == [corpus_document(seed) for seed in range(40)]
    assert len(set(docs)) == 40
    assert all(any(c in d.lower() for c in COLOURS) for d in docs)
    assert "Q: " in corpus_document(3, "qa") and corpus_document(3, "caption").endswith(".")


def test_needle_documents_follow_lwm():
    doc = needle_document(9, 400, 50)
    needle = f"\nThe special magic {doc.city} number is: {doc.number}\n"
    assert doc.context.count(needle) == 1 and doc.city in NEEDLE_CITIES
    assert len(doc.number) == 7 and doc.number.isdigit()
    before = doc.context.split(needle)[0]
    assert before.endswith(".")  # backed off to a sentence end
    assert 0.35 < len(before) / len(doc.context) < 0.55
    assert doc.question == f"What is the special magic {doc.city} number?"
    assert doc.prompt == (f"You are a helpful assistant. USER: {doc.context} {doc.question} Don't give information "
                          "outside the document or repeat your findings. Keep your response short and direct. "
                          "ASSISTANT: ")
    assert doc.length >= 400 and len(doc.context.replace(needle, " ").split()) == pytest.approx(doc.length, abs=5)
    assert needle_document(9, 400, 0).context.startswith(needle)
    assert needle_document(9, 400, 100).context.endswith(needle)
    chars = needle_document(1, 3000, 30, count=len)  # any length measure, e.g. a tokenizer's
    assert chars.length >= 3000 and len(chars.context) < 3000 + 600
    assert doc.conversation()[1]["value"] == f"The special magic {doc.city} number is: {doc.number}"
