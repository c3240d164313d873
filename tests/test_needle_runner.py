"""The needle runner with a tiny random model: an interrupted run resumes without recomputing finished
trials and ends with the JSON of an uninterrupted run; one compile per length; a prompt that reaches
the model's limit (LWM's 1M on a 1M model) still runs, and greedily equals full forward passes."""

import jax
import jax.numpy as jnp
import pytest

from lwm_core import ModelConfig, Sampler, load_model
from lwm_core.evals import TIMING_FIELDS, NeedleSettings, load_haystack, read_results, run_needle
from lwm_core.text import load_tokenizer

CONFIG = ModelConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     max_sequence_length=1024, initializer_range=0.2)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tests/data/tokenizer/tokenizer.model")


@pytest.fixture(scope="module")
def model():
    return load_model("random:debug", CONFIG)


class CountingSampler:
    """A Sampler that remembers the prompts of every generate call."""

    def __init__(self, sampler):
        self.sampler, self.calls = sampler, []

    def generate(self, prompts, **kwargs):
        self.calls.append([list(p) for p in prompts])
        return self.sampler.generate(prompts, **kwargs)


def _without_timings(records):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def test_interrupted_run_resumes_without_recomputing_and_matches_an_uninterrupted_run(tok, model, tmp_path):
    settings = NeedleSettings(lengths=(400, 600), depths=(0.0, 50.0, 100.0), rounds=2, batch_size=4, max_new_tokens=6,
                              buffer=50)
    hay = load_haystack(tok, None, tokens=1200)
    sampler = Sampler(model, chunk_size=128)
    full = run_needle(sampler, tok, hay, settings, tmp_path / "full.json")
    assert len(full) == 12 and sum(r["context_length"] == 400 for r in full) == 6

    class Stop(Exception):
        pass

    def stop_after_two(new, done, total):
        if done == 4:
            raise Stop  # after the first batch of four: a crash or Ctrl-C mid-run

    part = tmp_path / "part.json"
    first = CountingSampler(sampler)
    with pytest.raises(Stop):
        run_needle(first, tok, hay, settings, part, on_batch=stop_after_two)
    assert len(read_results(part)) == 4 and len(first.calls) == 1
    second = CountingSampler(sampler)
    resumed = run_needle(second, tok, hay, settings, part)
    # the rerun generated only the 8 trials left: 2 of length 400 (padded to a batch of 4), 6 of length 600
    rows = [p for call in second.calls for p in call]
    finished_prompts = [p for call in first.calls for p in call]
    assert len(second.calls) == 3 and not any(p in finished_prompts for p in rows)
    assert _without_timings(resumed) == _without_timings(full)
    assert _without_timings(read_results(part)) == _without_timings(full)
    # nothing left: a third run calls nothing
    third = CountingSampler(sampler)
    assert _without_timings(run_needle(third, tok, hay, settings, part)) == _without_timings(full)
    assert third.calls == []


def test_records_hold_what_the_issue_lists(tok, model, tmp_path):
    settings = NeedleSettings(lengths=(500,), depths=(50.0,), needles=3, retrieve=2, batch_size=1, max_new_tokens=4,
                              buffer=40)
    (record,) = run_needle(Sampler(model, chunk_size=128), tok, load_haystack(tok, None, 600), settings,
                           tmp_path / "r.json")
    for field in ("context_length", "context_tokens", "depth_percent", "needle_positions", "answer", "response",
                  "correct", "round", "prefill_s", "decode_s"):
        assert field in record, field
    assert record["context_length"] == 500 and record["context_tokens"] == 460 and len(record["needle_positions"]) == 3
    assert len(record["answer"]) == 2
    assert record["correct"] == sum(a in record["response"] for a in record["answer"]) / 2


def test_one_compile_per_length_bucket(tok, model, tmp_path):
    settings = NeedleSettings(lengths=(400,), depths=(0.0, 25.0, 50.0, 75.0, 100.0), batch_size=2, max_new_tokens=3,
                              buffer=20)
    sampler = Sampler(model, chunk_size=512)
    run_needle(sampler, tok, load_haystack(tok, None, 500), settings, tmp_path / "c.json")
    # three batches (2, 2, 1 padded to 2) of one prompt bucket: one prefill and one step function
    assert sampler.traces == {"prefill": 1, "step": 1}


def test_a_prompt_at_the_models_limit_runs_and_equals_full_forward_passes(model):
    # whole chunks of 128 would pad 1013 prompt tokens to 1024 + 8 new > 1024: padded to 1013 instead
    sampler = Sampler(model, chunk_size=128)
    assert sampler.plan(1013, 8) == (1013, 128, 1024)  # sp = 1: the last of 8 chunks holds 117 tokens
    assert sampler.plan(900, 8) == (960, 128, 1024)  # a multiple of 64 where one fits
    prompt = [1] + [(7 * i) % 500 + 3 for i in range(1012)]
    out = sampler.generate([prompt], max_new_tokens=8)
    forward = jax.jit(lambda x: model(x)[0])  # right-padded to 1024 (causal: no effect before): one compile
    ids = list(prompt)
    for _ in range(8):  # the reference: argmax of a full forward pass over everything so far
        logits = forward(jnp.asarray([ids + [0] * (1024 - len(ids))]))
        ids.append(int(jnp.argmax(logits[0, len(ids) - 1])))
    assert out.tokens[0].tolist() == ids[1013:]


def test_ids_past_the_tokenizers_vocabulary_are_dropped_from_the_response(tok, tmp_path):
    """A model's vocabulary may be padded past its tokenizer's: such generated ids have no text."""
    import numpy as np

    from lwm_core.infer.sampler import Generation

    class Fixed:  # the 'model' answers: <id 600>, then the pieces of ' 1234', then eos
        def generate(self, prompts, **kwargs):
            row = [600] + tok.encode(" 1234") + [tok.eos_id]
            tokens = np.asarray([row] * len(prompts), np.int32)
            return Generation(tokens, np.zeros_like(tokens, bool), np.full(len(prompts), len(row)), 0, 0)

    settings = NeedleSettings(lengths=(400,), depths=(50.0,), batch_size=1, max_new_tokens=8, buffer=20)
    (record,) = run_needle(Fixed(), tok, load_haystack(tok, None, 500), settings, tmp_path / "v.json")
    assert record["response"] == tok.decode(tok.encode(" 1234"))
