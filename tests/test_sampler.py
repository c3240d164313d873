"""The sampler against full forward passes: greedy text and vision generation of a left-padded mixed batch,
classifier-free guidance, forced tokens, eos, streaming, compile counts, and the logits processors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lwm_core import LWMError, ModelConfig, load_model
from lwm_core.infer import ForcedTokens, Sampler, SamplingSettings, compose, pick, top_k, top_p

CONFIG = ModelConfig(vocab_size=97, hidden_size=48, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4,
                     max_sequence_length=256, initializer_range=0.2, vision=True, vision_vocab_size=8448)


@pytest.fixture(scope="module")
def model():
    return load_model("random:debug", CONFIG)


@pytest.fixture(scope="module")
def sampler(model):
    return Sampler(model, chunk_size=16)


def _mixed_prompts():
    """Three prompts of different lengths: text only, text + vision codes + text, mostly vision."""
    rng = np.random.default_rng(0)
    text = lambda n: list(rng.integers(3, 97, n))
    codes = lambda n: list(rng.integers(0, 8448, n))
    prompts = [text(5), text(4) + codes(9) + text(3), [1] + codes(20)]
    masks = [[False] * 5, [False] * 4 + [True] * 9 + [False] * 3, [False] + [True] * 20]
    return prompts, masks


@jax.jit
def _forward(model_state, ids, vis):
    return nnx.merge(_GRAPH[0], model_state)(ids, vision_masks=vis)


_GRAPH = []


def _reference(model, prompt, vmask, heads, width=48):
    """Greedy continuation by full forward passes: argmax of the head each step names. Inputs are
    right-padded to `width` (causal: no effect on earlier positions) so one compile serves all."""
    graphdef, state = nnx.split(model)
    _GRAPH[:] = [graphdef]
    ids, vis = list(prompt), list(vmask)
    for head in heads:
        n = len(ids)
        text, vision = _forward(state, jnp.asarray([ids + [0] * (width - n)]),
                                jnp.asarray([vis + [False] * (width - n)]))
        logits = vision if head == "vision" else text
        ids.append(int(jnp.argmax(logits[0, n - 1])))
        vis.append(head == "vision")
    return ids[len(prompt):]


@pytest.mark.parametrize("schedule", ["text", "vision", "alternating"])
def test_greedy_equals_argmax_over_full_forward_passes_for_a_mixed_left_padded_batch(model, sampler, schedule):
    prompts, masks = _mixed_prompts()
    steps = 6
    heads = {"text": ["text"] * steps, "vision": ["vision"] * steps,
             "alternating": ["vision" if i % 2 else "text" for i in range(steps)]}[schedule]
    out = sampler.generate(prompts, vision_masks=masks, max_new_tokens=steps,
                           vision_schedule=lambda i: heads[i] == "vision")
    for row, (prompt, vmask) in enumerate(zip(prompts, masks, strict=True)):
        assert out.tokens[row].tolist() == _reference(model, prompt, vmask, heads), row
    np.testing.assert_array_equal(out.vision_masks, np.array([[h == "vision" for h in heads]] * 3))
    if schedule != "text":  # vision steps picked from the vision vocabulary, beyond the text one
        assert (out.tokens[out.vision_masks] >= 97).any()


def test_cfg_with_scale_one_equals_conditional_sampling(sampler):
    prompts, masks = _mixed_prompts()
    settings = SamplingSettings(temperature=1.0, top_k=50)
    plain = sampler.generate(prompts[1:2], vision_masks=masks[1:2], max_new_tokens=8, head="vision",
                             settings=settings, seed=3)
    guided = sampler.generate(prompts[1:2], vision_masks=masks[1:2], max_new_tokens=8, head="vision",
                              settings=settings, seed=3, cfg_scale=1.0, uncond_prompts=[[1, 7, 8]])
    np.testing.assert_array_equal(guided.tokens, plain.tokens)
    stronger = sampler.generate(prompts[1:2], vision_masks=masks[1:2], max_new_tokens=8, head="vision",
                                settings=settings, seed=3, cfg_scale=5.0, uncond_prompts=[[1, 7, 8]])
    assert not np.array_equal(stronger.tokens, plain.tokens)  # guidance does change the samples


def _guided_reference(model, cond, cmask, uncond, umask, scale, steps, width=48):
    """Greedy guided vision generation by full forward passes of each row alone (no padding, no cache):
    argmax of uncond + scale * (cond - uncond) on the vision head, fed back to both rows as vision."""
    graphdef, state = nnx.split(model)
    _GRAPH[:] = [graphdef]
    rows = [(list(cond), list(cmask)), (list(uncond), list(umask))]
    out = []
    for _ in range(steps):
        logits = []
        for ids, vis in rows:
            n = len(ids)
            _, vision = _forward(state, jnp.asarray([ids + [0] * (width - n)]),
                                 jnp.asarray([vis + [False] * (width - n)]))
            logits.append(vision[0, n - 1])
        token = int(jnp.argmax(logits[1] + scale * (logits[0] - logits[1])))
        out.append(token)
        for ids, vis in rows:
            ids.append(token)
            vis.append(True)
    return out


def test_guided_rows_prefilled_at_their_own_length_equal_padding_them(model):
    """The unconditional row (2 ids) is prefilled at its own bucket (16) beside the conditional one (30
    ids, bucket 32): the same cache, token for token the same guided generation as padding it to 32,
    and both equal guidance over full forward passes of each row alone."""
    prompts, masks = _mixed_prompts()
    cond, cmask = prompts[1] + prompts[2][1:11], masks[1] + masks[2][1:11]  # 26 ids, text and vision
    uncond, umask = [1, 8], [False, False]
    grouped = Sampler(model, chunk_size=64)
    padded = Sampler(model, chunk_size=64, group_guided_rows=False)
    kwargs = dict(vision_masks=[cmask], uncond_prompts=[uncond], uncond_vision_masks=[umask], head="vision",
                  cfg_scale=3.0, max_new_tokens=6)
    first = {}
    for name, sampler in (("grouped", grouped), ("padded", padded)):
        token, cache, _, length = sampler.prefill([cond], **kwargs)
        first[name] = (np.asarray(token), jax.tree.map(np.asarray, cache), length)
    assert any(name[:2] == ("prefill", True) for name in grouped._jitted) and not any(
        name[:2] == ("prefill", True) for name in padded._jitted)  # the two paths did run
    (tok_g, cache_g, len_g), (tok_p, cache_p, len_p) = first["grouped"], first["padded"]
    assert len_g == len_p == 32 and int(cache_g.length) == int(cache_p.length) == 32
    np.testing.assert_array_equal(tok_g, tok_p)
    np.testing.assert_array_equal(cache_g.key_valid, cache_p.key_valid)
    np.testing.assert_array_equal(cache_g.next_position, cache_p.next_position)
    assert cache_g.key_valid[1].sum() == 2 and cache_g.key_valid[1, 30:32].all()  # uncond ends at slot 32
    valid = cache_p.key_valid[None, :, None, :, None]
    for name in ("k", "v"):
        np.testing.assert_allclose(np.where(valid, getattr(cache_g, name), 0),
                                   np.where(valid, getattr(cache_p, name), 0), atol=1e-5, rtol=1e-5)
    out_g = grouped.generate([cond], **kwargs).tokens[0].tolist()
    out_p = padded.generate([cond], **kwargs).tokens[0].tolist()
    assert out_g == out_p == _guided_reference(model, cond, cmask, uncond, umask, 3.0, 6)


def test_cfg_logits_follow_lwm_formula(model):
    from lwm_core.infer import guidance

    logits = jnp.asarray(np.random.default_rng(1).standard_normal((4, 10)), jnp.float32)  # [cond x2; uncond x2]
    np.testing.assert_allclose(guidance(3.0)(logits), logits[2:] + 3.0 * (logits[:2] - logits[2:]), rtol=1e-6)


def test_forced_tokens_appear_exactly_at_their_positions(sampler):
    prompts, masks = _mixed_prompts()
    forced = ForcedTokens(positions=(0, 5), tokens=(8200, 8300), period=4, token_every=8192)
    out = sampler.generate(prompts, vision_masks=masks, max_new_tokens=13, head="vision", forced=forced,
                           settings=SamplingSettings(temperature=1.0), seed=1)
    for i in range(13):
        expected = forced.at(i)
        column = out.tokens[:, i]
        if expected >= 0:
            assert (column == expected).all(), i
    assert [forced.at(i) for i in range(13)] == [8200, -1, -1, 8192, -1, 8300, -1, 8192, -1, -1, -1, 8192, -1]
    lwm = ForcedTokens.every(257, 8192)  # LWM: end of frame at every 257th generated position
    assert [i for i in range(600) if lwm.at(i) >= 0] == [256, 513]


def test_generation_stops_at_eos_and_streams_each_step(model):
    sampler = Sampler(model, chunk_size=16)
    prompts = [[1, 5, 9], [1, 20, 30, 40]]
    free = sampler.generate(prompts, max_new_tokens=6)
    eos = int(free.tokens[0, 1])  # row 0 emits this at step 1: call it eos
    seen = []
    out = sampler.generate(prompts, max_new_tokens=6, eos_token_id=eos, on_token=lambda i, t: seen.append(i))
    assert out.tokens[0, :2].tolist() == free.tokens[0, :2].tolist() and (out.tokens[0, 1:] == eos).all()
    assert out.lengths[0] == 2
    first = np.flatnonzero(free.tokens[1] == eos)
    stop = first[0] + 1 if first.size else 6
    np.testing.assert_array_equal(out.tokens[1, :stop], free.tokens[1, :stop])
    assert seen == list(range(len(seen))) and len(seen) == (6 if not first.size else max(2, stop))


def test_five_prompt_lengths_in_one_bucket_compile_once(model):
    sampler = Sampler(model, chunk_size=64)
    rng = np.random.default_rng(2)
    for length in (17, 19, 21, 23, 24):  # prompt bucket 24: one prefill chunk shape, one cache size
        sampler.generate([list(rng.integers(3, 97, length))], max_new_tokens=4)
    assert sampler.traces == {"prefill": 1, "step": 1}
    assert sampler.plan(17, 4) == sampler.plan(24, 4) == (24, 24, 256)
    sampler.generate([list(rng.integers(3, 97, 40))], max_new_tokens=4)  # bucket 48: a new prefill shape
    assert sampler.traces == {"prefill": 2, "step": 1}


def test_a_needle_like_batch_of_long_prompts_shares_one_compile(model):
    sampler = Sampler(model, chunk_size=16)
    rng = np.random.default_rng(3)
    for length in (50, 55, 60, 64):  # 4 chunks of 16 each, one cache bucket
        sampler.generate([list(rng.integers(3, 97, length))], max_new_tokens=2)
    assert sampler.traces == {"prefill": 1, "step": 1}


def test_a_long_prompt_is_split_into_even_chunks_not_padded_to_whole_ones():
    """8,250 tokens in chunks of at most 2,048: five chunks of 1,664 (1,650 rounded up to 64), 70 tokens
    of left padding instead of 1,990 (whole chunks: 10,240)."""
    sampler = Sampler(load_model("random:debug", CONFIG.replace(max_sequence_length=16384)), chunk_size=2048)
    assert sampler.plan(8250, 32)[:2] == (8320, 1664)
    assert sampler.plan(8192, 32)[:2] == (8192, 2048)
    assert sampler.plan(2049, 32)[:2] == (2176, 1088)


def test_even_chunks_generate_what_full_forward_passes_do(model):
    sampler = Sampler(model, chunk_size=96)
    prompt = list(np.random.default_rng(4).integers(3, 97, 100))
    assert sampler.plan(100, 4)[:2] == (128, 64)  # not 192 in chunks of 96
    out = sampler.generate([prompt], max_new_tokens=4)
    assert out.tokens[0].tolist() == _reference(model, prompt, [False] * 100, ["text"] * 4, width=112)


def test_top_k_stays_in_the_top_k_and_top_p_in_the_nucleus():
    logits = jnp.asarray(np.random.default_rng(7).standard_normal((4, 50)).astype(np.float32))
    top3 = np.argsort(-np.asarray(logits), axis=-1)[:, :3]
    seen = set()
    for seed in range(40):
        tokens = np.asarray(pick(top_k(3)(logits), jax.random.PRNGKey(seed), greedy=False))
        assert all(t in row for t, row in zip(tokens, top3, strict=True))
        seen.update(tokens.tolist())
    assert len(seen) > 4  # it samples, it does not always pick the argmax
    probs = np.asarray(jax.nn.softmax(logits))
    kept = np.isfinite(np.asarray(top_p(0.5)(logits)))
    for row in range(4):
        order = np.argsort(-probs[row])
        need = int(np.searchsorted(np.cumsum(probs[row][order]), 0.5) + 1)  # smallest set reaching 0.5
        assert sorted(np.flatnonzero(kept[row])) == sorted(order[:need]), row
    both = compose(top_k(3), top_p(0.01))(logits)  # top-p 0.01 keeps just the best token
    np.testing.assert_array_equal(np.argmax(np.asarray(both), -1), np.argmax(np.asarray(logits), -1))
    assert (np.isfinite(np.asarray(both)).sum(-1) == 1).all()


def test_bad_sampler_input_is_one_line(model):
    sampler = Sampler(model)
    with pytest.raises(LWMError, match="exceeds the model's max_sequence_length 256"):
        sampler.generate([[1] * 200], max_new_tokens=100)
    with pytest.raises(LWMError, match="needs uncond_prompts"):
        sampler.generate([[1, 2]], max_new_tokens=2, cfg_scale=3.0)
    with pytest.raises(LWMError, match="prompt 0 is empty"):
        sampler.generate([[]], max_new_tokens=2)
    with pytest.raises(LWMError, match="head must be one of"):
        sampler.generate([[1]], max_new_tokens=2, head="audio")
    with pytest.raises(LWMError, match="temperature must be >= 0"):
        sampler.generate([[1]], max_new_tokens=2, settings=SamplingSettings(temperature=-1))


def test_sampler_on_a_mesh_generates_what_one_device_does(model):
    from lwm_core import make_mesh

    prompts, masks = _mixed_prompts()
    one = Sampler(model, chunk_size=16).generate(prompts, vision_masks=masks, max_new_tokens=5)
    sharded_model = load_model("random:debug", CONFIG, mesh=make_mesh("1,2,2,2"))
    sampler = Sampler(sharded_model, chunk_size=16)
    out = sampler.generate(prompts, vision_masks=masks, max_new_tokens=5)
    np.testing.assert_array_equal(out.tokens, one.tokens)
    assert out.cache_length % 2 == 0  # the cache bucket is rounded to sp
