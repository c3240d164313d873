"""The needle's prompts in the fixture tokenizer (depth, sentence back-off, length, LWM's template,
multi-needle), RULER's tasks and string-match-all on literal responses, the grid's lengths and depths,
the plan and its refusals, and the heatmap's colours."""

import json
import random
import re

import numpy as np
import pytest

from lwm_core import LWMError, ModelConfig
from lwm_core.evals import (
    CITIES, TASKS, NeedleSettings, context_lengths, depth_percents, heatmap_png, load_haystack, lwm_trial,
    parse_length, plan_needle, ruler_trial, score, string_match_all,
)
from lwm_core.evals.heatmap import score_colour
from lwm_core.text import load_tokenizer

TOKENIZER = "tests/data/tokenizer/tokenizer.model"
WORDS = "the a cat dog fox tree house sky red blue green runs jumps over lazy scene picture".split()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TOKENIZER)


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """A jsonl haystack of seeded sentences of 3 to 12 words, and its longest sentence in tokens."""
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))).capitalize() + "."
                 for _ in range(1500)]
    path = tmp_path_factory.mktemp("hay") / "book.jsonl"
    lines = [" ".join(sentences[i:i + 30]) + " " for i in range(0, len(sentences), 30)]
    path.write_text("\n".join(json.dumps({"text": line}) for line in lines) + "\n")
    return path, sentences


def _prefix_tokens(tok):
    # what precedes the context in LWM's template: <s> + "You are a helpful assistant. USER: "
    return len(tok.encode_prompt("<s>You are a helpful assistant. USER: "))


@pytest.mark.parametrize("length", [1000, 3000])
@pytest.mark.parametrize("depth", [0, 10, 33, 50, 77, 100])
def test_needle_starts_at_the_depth_backed_off_to_a_sentence_end_and_the_prompt_fits(tok, book, length, depth):
    path, sentences = book
    hay = load_haystack(tok, path, tokens=length)
    trial = lwm_trial(tok, hay, context_length=length, depth_percent=depth, round_index=0, seed=1234, buffer=200)
    ids, (pos,) = trial.ids, trial.needle_positions
    assert len(ids) == length - 200  # the template, context and needle fill the length less the buffer
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
    text = tok.decode(ids)
    city, number = trial.keys[0], trial.answers[0]
    needle = f"\nThe special magic {city} number is: {number}\n"
    assert text.startswith("You are a helpful assistant. USER: ")
    assert text.endswith(f" What is the special magic {city} number? Don't give information outside the document "
                         "or repeat your findings. Keep your response short and direct. ASSISTANT: ")
    assert text.count(needle) == 1 and city in CITIES and 1_000_000 <= int(number) <= 9_999_999
    # the needle's token position, checked by decoding from it
    assert tok.decode(ids[pos:]).startswith(needle)
    start = _prefix_tokens(tok)
    question = len(tok.encode(f" What is the special magic {city} number? Don't give information outside the "
                              "document or repeat your findings. Keep your response short and direct. ASSISTANT: "))
    needle_tokens = len(tok.encode(needle)) - 1  # inside the text it gets no dummy-prefix '▁'
    context = len(ids) - start - needle_tokens - question
    asked = start + context * depth / 100
    longest = max(len(tok.encode(s)) for s in sentences) + 2
    if depth == 100:
        assert tok.decode(ids[pos:]).startswith(needle + " What is")  # appended at the end
    else:  # before the asked point by less than one sentence, right after a '.'
        assert asked - longest <= pos <= asked + 3, (pos, asked)
        assert pos == start or tok.decode(ids[start:pos]).endswith(".")


def test_multi_needle_keys_and_depths_are_distinct_and_the_question_asks_for_retrieve_of_them(tok, book):
    hay = load_haystack(tok, book[0], tokens=4000)
    trial = lwm_trial(tok, hay, context_length=4000, depth_percent=20, round_index=1, needles=4, retrieve=2)
    assert len(set(trial.keys)) == 4 and len(set(trial.needle_positions)) == 4
    text = tok.decode(trial.ids)
    numbers = {}
    for city, pos in zip(trial.keys, trial.needle_positions, strict=True):
        found = re.match(rf"\nThe special magic {city} number is: (\d{{7}})\n", tok.decode(trial.ids[pos:]))
        assert found, city
        numbers[city] = found.group(1)
    asked = [c for c in trial.keys if numbers[c] in trial.answers]
    assert len(trial.answers) == 2 and len(asked) == 2
    assert f"What are the special magic numbers for {', '.join(asked)}?" in text
    # the first needle at the asked depth, the others 25 points apart around the document
    order = sorted(trial.needle_positions)
    assert order[0] < order[1] < order[2] < order[3]
    assert score(trial.answers, f"{trial.answers[0]} and {trial.answers[1]}") == 1.0
    assert score(trial.answers, f"only {trial.answers[1]}") == 0.5


def test_trials_are_reproducible_from_the_seed_and_rounds_use_other_parts_of_the_haystack(tok, book):
    hay = load_haystack(tok, book[0], tokens=3 * 2000)
    a = lwm_trial(tok, hay, context_length=2000, depth_percent=50, round_index=0, seed=1234)
    b = lwm_trial(tok, hay, context_length=2000, depth_percent=50, round_index=0, seed=1234)
    other_round = lwm_trial(tok, hay, context_length=2000, depth_percent=50, round_index=1, seed=1234)
    other_seed = lwm_trial(tok, hay, context_length=2000, depth_percent=50, round_index=0, seed=7)
    assert a == b
    assert (a.keys, a.answers) != (other_seed.keys, other_seed.answers)
    start = _prefix_tokens(tok)
    assert a.ids[start:start + 50] != other_round.ids[start:start + 50]


def test_short_haystack_is_repeated_and_the_built_in_one_is_rulers_noise(tok, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("A fox runs over the lazy dog.")
    hay = load_haystack(tok, short, tokens=500)
    assert hay.repeated and len(hay.ids) >= 500 and hay.source == str(short)
    assert not load_haystack(tok, short, tokens=5).repeated
    built_in = load_haystack(tok, None, tokens=300)
    assert built_in.source == "built-in"
    assert tok.decode(built_in.ids[:40]).startswith("The grass is green. The sky is blue. The sun is yellow.")
    with pytest.raises(LWMError, match="does not exist"):
        load_haystack(tok, tmp_path / "missing.jsonl", tokens=10)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(LWMError, match="line 1 is not a JSON object with a 'text' string"):
        load_haystack(tok, bad, tokens=10)


def test_string_match_all_on_literal_responses():
    assert string_match_all(["1234567"], "The special magic numbers are 1234567.") == 1.0
    assert string_match_all(["1234567", "7654321"], "1234567 only") == 0.5
    assert string_match_all(["abc-DEF"], "ABC-def, I think") == 1.0  # case-insensitive, as RULER
    assert string_match_all(["1234567", "7654321", "1111111", "2222222"], "none of them") == 0.0
    assert score(["1234567"], "The number is 1234567") == 1.0 and score(["1234567"], "123456") == 0.0


@pytest.mark.parametrize("name", list(TASKS))
def test_ruler_tasks_build_prompts_that_end_with_the_answer_prefix(tok, name):
    hay = load_haystack(tok, None, tokens=2000)
    trial = ruler_trial(name, tok, hay, context_length=2000, depth_percent=40, round_index=0, buffer=100)
    task = TASKS[name]
    assert len(trial.ids) == 1900
    text = tok.decode(trial.ids)
    type_v = task.values
    assert text.startswith(f"You are a helpful assistant. USER: Some special magic {type_v} are hidden")
    asked = list(dict.fromkeys(trial.keys))[:task.num_queries]
    query = asked[0] if len(asked) == 1 else ", ".join(asked[:-1]) + ", and " + asked[-1]
    assert text.endswith(f" ASSISTANT: The special magic {type_v} for {query} mentioned in the provided text are")
    assert len(trial.answers) == task.num_values * task.num_queries
    for key, pos in zip(trial.keys, trial.needle_positions, strict=True):
        assert tok.decode(trial.ids[pos:]).startswith(f"One of the special magic {type_v} for {key} is: ")
    for value in trial.answers:
        assert value in text
        if type_v == "uuids":
            assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", value)
        else:
            assert 1_000_000 <= int(value) <= 9_999_999
    if task.haystack == "needles":  # the haystack is other keys' needles; the asked key appears once
        assert text.count(f"One of the special magic {type_v} for ") > 10
        assert text.count(f"for {asked[0]} is: ") == 1
    if name == "multikey_1":
        assert len(set(trial.keys)) == 4 and len(trial.answers) == 1


def test_context_lengths_and_depths_follow_lwms_grid():
    assert parse_length("1M") == 1_048_576 and parse_length("128K") == 131_072 and parse_length("3000") == 3000
    assert context_lengths("1M") == [1_048_576]
    assert context_lengths("4K,32K, 1M") == [4096, 32768, 1_048_576]
    assert context_lengths("4000", "1000", 4) == [1000, 2000, 3000, 4000]
    assert context_lengths("1000000", None, 3) == [1000, 500500, 1000000]  # LWM's default minimum 1000
    assert depth_percents(3) == [0, 50, 100] and depth_percents(5) == [0, 25, 50, 75, 100]
    assert depth_percents(4) == [0, 33, 67, 100]  # round(linspace), as LWM
    assert depth_percents(depths="100,0,50") == [0, 50, 100]
    for bad in ("0", "-3K", "4X"):
        with pytest.raises(LWMError, match="must be a positive number of tokens"):
            parse_length(bad)
    with pytest.raises(LWMError, match="from 0 to 100"):
        depth_percents(depths="0,150")
    with pytest.raises(LWMError, match="must fit in the --buffer"):
        NeedleSettings(lengths=(4096,), depths=(0,), max_new_tokens=300)
    with pytest.raises(LWMError, match="unknown RULER task"):
        NeedleSettings(lengths=(4096,), depths=(0,), task="single_9")


def test_plan_refuses_a_length_beyond_the_model_or_a_memory_budget_and_lowers_the_batch():
    config = ModelConfig.from_name("7b-1m")
    settings = NeedleSettings(lengths=(131072, 1_048_576), depths=(0.0, 50.0), rounds=2, batch_size=4)
    plan = plan_needle(config, "1,1,1,8", settings, flops_per_s=1e12)
    assert plan["cells"] == 4 and plan["trials"] == 8 and plan["largest_length"] == 1_048_576
    # the KV cache per device: k and v, 32 layers x batch x 32 heads x slots x 128 dims in fp32, slots split by 8
    assert plan["cache_per_device"] == 2 * 32 * 4 * 32 * plan["cache_length"] * 128 * 4 // 8
    assert plan["largest_prefill"] >= 1_048_576 - 200 and plan["cache_length"] <= 1_048_576
    budget = plan["memory_per_device"] // 3
    lowered = plan_needle(config, "1,1,1,8", settings, max_memory=budget, flops_per_s=1e12)
    assert lowered["batch_size"] == 1 and lowered["memory_per_device"] <= budget
    with pytest.raises(LWMError, match=r"over the --max-memory 1\.00 GiB"):
        plan_needle(config, "1,1,1,8", settings, max_memory=2**30, flops_per_s=1e12)
    too_long = NeedleSettings(lengths=(2 * 1_048_576,), depths=(0.0,))
    with pytest.raises(LWMError, match="exceeds the model's max_sequence_length 1,048,576"):
        plan_needle(config, "1,1,1,8", too_long, flops_per_s=1e12)


def test_heatmap_uses_lwms_scale_per_cell(tmp_path):
    from PIL import Image

    assert score_colour(0) == (0xF0, 0x49, 0x6E) and score_colour(0.5) == (0xEB, 0xB8, 0x39)
    assert score_colour(1) == (0x0C, 0xD7, 0x9F)
    records = [{"context_length": n, "depth_percent": d, "correct": c}
               for n, d, c in [(1000, 0.0, True), (1000, 100.0, False), (2000, 0.0, True), (2000, 0.0, False),
                               (2000, 100.0, True)]]
    png = heatmap_png(records, tmp_path / "r.png")
    image = np.asarray(Image.open(png).convert("RGB"))
    # cell (length i, depth j) spans [90 + i * 280, +280) x [46 + j * 26, +26) with two lengths
    centre = lambda i, j: tuple(image[46 + j * 26 + 13, 90 + i * 280 + 140])
    assert centre(0, 0) == score_colour(1) and centre(0, 1) == score_colour(0)
    assert centre(1, 0) == score_colour(0.5) and centre(1, 1) == score_colour(1)


def test_length_labels_use_k_of_1024():
    from lwm_core.evals.heatmap import length_label

    assert [length_label(n) for n in (1_048_576, 131_072, 4096, 1000, 55_632)] == ["1M", "128K", "4K", "1000", "54K"]
