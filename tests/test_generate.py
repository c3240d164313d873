"""lwm_core.infer.generate: LWM's text-to-image/video recipe. A model rigged to prefer known codes gives
exactly those codes and the forced end-of-frame ids; greedy guided generation equals a naive loop over
full forward passes; guidance scale 1 equals plain conditional sampling; bad plans are one line."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lwm_core import LWMError, ModelConfig, load_model
from lwm_core.infer import ForcedTokens, Sampler
from lwm_core.infer.generate import (
    CodeSampling, GenerationSettings, call_seed, generate_vision, lwm_uint8, output_paths, plan_generation,
    plan_memory,
)
from lwm_core.model import LWMModel
from lwm_core.text import load_tokenizer
from lwm_core.vqgan import VQGANConfig

TOKENIZER = Path(__file__).parent / "data" / "tokenizer" / "tokenizer.model"
VQ = VQGANConfig.from_name("tiny")  # 4 x 4 = 16 codes per frame from 512
STEP = 17  # a frame: 16 codes + end of frame
CONFIG = ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                     max_sequence_length=256, initializer_range=0.2, vision=True, vision_vocab_size=8448)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TOKENIZER)


@pytest.fixture(scope="module")
def model():
    return load_model("random:debug", CONFIG)


def _prompt(tok, what, prompt="a red fox"):
    # LWM_FACTS "How LWM tokenizes a prompt": one call after the literal <s>
    return [1] + tok.encode(f"You are a helpful assistant. USER: Generate {what} of {prompt} ASSISTANT: <vision>")


def _rigged_model(extra_columns=()):
    """Attention and MLP outputs zeroed, so the last hidden state is the last token's embedding: text
    tokens embed as e_9, code c < 64 as e_c, end of frame (8192) as e_40; the vision head scores code
    c by e_{c-1} (x 100). So among codes the model prefers: 10 after any text, c + 1 after code c, 41
    after an end of frame. `extra_columns` (id, state): ids the head scores higher still (x 200)."""
    params = load_model("random:debug", CONFIG).params_dict()
    d, e = CONFIG.hidden_size, np.eye(CONFIG.hidden_size, dtype=np.float32)
    for key in params:
        if key.endswith(("attention/wo/kernel", "feed_forward/w2/kernel")):
            params[key] = np.zeros_like(params[key])
    params["transformer/wte/embedding"] = np.tile(e[9], (CONFIG.vocab_size, 1))
    vte = np.zeros((CONFIG.vision_vocab_size, d), np.float32)
    vte[:64], vte[8192] = e, e[40]
    params["transformer/vte/embedding"] = vte
    head = np.zeros((d, CONFIG.vision_vocab_size), np.float32)
    head[:, :64] = 100.0 * np.roll(e, 1, axis=1)  # column c = e_{c-1}
    for column, state in extra_columns:
        head[:, column] = 200.0 * e[state]
    params["vision_head/kernel"] = head
    return LWMModel.from_params(CONFIG, params)


def test_a_rigged_model_gives_its_codes_and_the_forced_end_of_frame_ids(tok):
    # after an end of frame the model prefers 600 (beyond the 512 codes) and 8193 (eov) even to code 41
    model = _rigged_model(extra_columns=[(600, 40), (8193, 40)])
    settings = GenerationSettings(frames=3, samples=2, seed=5)  # LWM's defaults: temperature 1, cfg 5 / 1
    plan = plan_generation(CONFIG, tok, "a red fox", VQ, settings)
    result = generate_vision(plan, Sampler(model, chunk_size=32))
    frame_1, later = list(range(10, 26)), list(range(41, 57))  # the model would pick 26 where eof is forced
    expected = frame_1 + [8192] + later + [8192] + later + [8192]
    assert result.vision_ids.tolist() == [expected, expected]
    np.testing.assert_array_equal(result.codes[0, 0], np.arange(10, 26).reshape(4, 4))  # row-major 4 x 4
    np.testing.assert_array_equal(result.codes[1, 2], np.arange(41, 57).reshape(4, 4))
    assert result.codes.shape == (2, 3, 4, 4)


_FORWARD = {}


def _vision_logits(model, ids, vmask, width=128):
    """Vision logits [T, V] of one row by a full forward pass, right-padded to `width` (causal: the
    padding does not change earlier positions) so one compile serves every length."""
    if id(model) not in _FORWARD:
        graphdef, state = nnx.split(model)
        _FORWARD[id(model)] = (jax.jit(lambda s, i, v: nnx.merge(graphdef, s)(i, vision_masks=v)[1]), state)
    forward, state = _FORWARD[id(model)]
    n = len(ids)
    ids = jnp.asarray([list(ids) + [0] * (width - n)])
    vmask = jnp.asarray([list(vmask) + [False] * (width - n)])
    return forward(state, ids, vmask)[0, :n]


def _naive(model, cond, cond_vm, uncond, uncond_vm, new, scale):
    """LWM's guided greedy loop by full forward passes (no cache): uncond + scale * (cond - uncond) on
    the vision head of both rows' last positions, codes only, end of frame at every 17th position."""
    cond, cond_vm, uncond, uncond_vm = list(cond), list(cond_vm), list(uncond), list(uncond_vm)
    out = []
    for i in range(new):
        if (i + 1) % STEP == 0:
            token = 8192
        else:
            c = np.asarray(_vision_logits(model, cond, cond_vm))[-1]
            u = np.asarray(_vision_logits(model, uncond, uncond_vm))[-1]
            guided = u + scale * (c - u)
            token = int(np.argmax(guided[:VQ.num_embeddings]))
        out.append(token)
        cond, uncond = cond + [token], uncond + [token]
        cond_vm, uncond_vm = cond_vm + [True], uncond_vm + [True]
    return out


def test_greedy_guided_video_equals_a_naive_loop_over_full_forward_passes(model, tok):
    # top-k does not change an argmax (greedy skips it): the naive loop takes the argmax over all codes
    settings = GenerationSettings(frames=2, temperature=0.0, cfg=5.0, cfg_video=3.0, top_k=3, top_k_video=2)
    plan = plan_generation(CONFIG, tok, "a red fox", VQ, settings)
    result = generate_vision(plan, Sampler(model, chunk_size=32))
    image, video, uncond = _prompt(tok, "an image"), _prompt(tok, "a video"), [1] + tok.encode("<vision>")
    frame_1 = _naive(model, image, [False] * len(image), uncond, [False] * len(uncond), STEP, 5.0)
    later = _naive(model, video + frame_1, [False] * len(video) + [True] * STEP,
                   uncond + frame_1, [False] * len(uncond) + [True] * STEP, STEP, 3.0)
    assert result.vision_ids[0].tolist() == frame_1 + later
    assert len(set(frame_1[:-1])) > 4  # a random model: the test is not comparing constants


def test_guidance_scale_one_equals_plain_conditional_sampling(model, tok):
    settings = GenerationSettings(frames=2, samples=2, cfg=1.0, cfg_video=1.0, top_k=50, top_k_video=20, seed=7)
    plan = plan_generation(CONFIG, tok, "a red fox", VQ, settings)
    sampler = Sampler(model, chunk_size=32)
    result = generate_vision(plan, sampler)
    image, video, uncond = _prompt(tok, "an image"), _prompt(tok, "a video"), [1] + tok.encode("<vision>")
    forced = ForcedTokens.every(STEP, 8192)

    def lwm_two_rows(prompts, vm, unconds, uvm, top_k, call, guided):
        extra = dict(cfg_scale=1.0, uncond_prompts=unconds, uncond_vision_masks=uvm) if guided else {}
        return sampler.generate(prompts, vision_masks=vm, max_new_tokens=STEP, head="vision", forced=forced,
                                settings=CodeSampling(temperature=1.0, top_k=top_k, num_codes=512),
                                seed=call_seed(7, call), **extra).tokens

    for guided in (True, False):  # LWM's uncond + 1 * (cond - uncond), and no unconditional rows at all
        first = lwm_two_rows([image] * 2, None, [uncond], None, 50, 0, guided)
        rows = [list(map(int, r)) for r in first]
        later = lwm_two_rows([video + r for r in rows], [[False] * len(video) + [True] * STEP] * 2,
                             [uncond + r for r in rows], [[False] * len(uncond) + [True] * STEP] * 2, 20, 1, guided)
        np.testing.assert_array_equal(result.vision_ids, np.concatenate([first, later], axis=1))
    assert not np.array_equal(result.vision_ids[0], result.vision_ids[1])  # samples differ


def test_a_second_image_from_the_same_sampler_compiles_nothing(model, tok):
    # time to first token: a compile per prefill (the KV cache's zeros were one) would dominate it
    plan = plan_generation(CONFIG, tok, "a red fox", VQ, GenerationSettings(temperature=0.0))
    sampler = Sampler(model)
    generate_vision(plan, sampler)  # compiles
    compiled = []

    def listen(event, seconds, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        generate_vision(plan, sampler)
        again = len(compiled)
        generate_vision(plan, Sampler(model, chunk_size=8))  # a new prompt chunk compiles: the listener hears it
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert again == 0 and len(compiled) > 0


def test_the_plan_states_lwm_prompts_and_its_context(tok):
    plan = plan_generation(CONFIG, tok, "a red fox", VQ, GenerationSettings(frames=3))
    image, video = _prompt(tok, "an image"), _prompt(tok, "a video")
    assert list(plan.image_prompt_ids) == image and list(plan.video_prompt_ids) == video
    assert list(plan.uncond_prompt_ids) == [1] + tok.encode("<vision>")
    assert plan.frame_length == STEP and plan.context_tokens == len(video) + 3 * STEP
    single = plan_generation(CONFIG, tok, "a red fox", VQ, GenerationSettings())
    assert single.video_prompt_ids is None and single.context_tokens == len(image) + STEP


def test_bad_plans_are_one_line(tok):
    video = len(_prompt(tok, "a video"))
    fit = (256 - video) // STEP
    with pytest.raises(LWMError, match=f"over the model's max_sequence_length 256; ask for at most {fit} frames"):
        plan_generation(CONFIG, tok, "a red fox", VQ, GenerationSettings(frames=fit + 1))
    plan_generation(CONFIG, tok, "a red fox", VQ, GenerationSettings(frames=fit))  # the largest that fits
    with pytest.raises(LWMError, match="text-only model"):
        plan_generation(CONFIG.replace(vision=False), tok, "a red fox", VQ)
    with pytest.raises(LWMError, match="the VQGAN has 16384 codes"):
        plan_generation(CONFIG, tok, "a red fox", VQ.replace(num_embeddings=16384))
    with pytest.raises(LWMError, match="the tokenizer has 512 pieces but the model only 100"):
        plan_generation(CONFIG.replace(vocab_size=100), tok, "a red fox", VQ)
    with pytest.raises(LWMError, match="the prompt is empty"):
        plan_generation(CONFIG, tok, "  ", VQ)
    for bad in (dict(frames=0), dict(samples=0), dict(cfg=-1.0), dict(top_k=0), dict(temperature=-0.5)):
        with pytest.raises(LWMError, match="must be >= "):
            GenerationSettings(**bad)


def test_the_memory_estimate_and_a_budget_refused_before_sampling(model, tok):
    weights = sum(v.nbytes for v in model.params_dict().values())  # the loaded model's own float32 arrays

    def expected(rows, cache, chunk):  # k and v [2 layers, rows, 2 heads, cache, 32] float32 + one chunk's
        # activations (estimate_memory: rows x chunk x (6 x hidden + 3 x intermediate) float32)
        return weights + 2 * (2 * rows * 2 * cache * 32) * 4 + rows * chunk * (6 * 64 + 3 * 40) * 4

    # 21-token prompts: frame 1's prompt pads to the bucket 24 (16, 24, 32, ...), the video prompt + frame 1
    # (38) to 48; each chunk is its bucket, each cache the 256 minimum (24 + 17, 48 + 2 x 17 new tokens)
    assert len(_prompt(tok, "an image")) == len(_prompt(tok, "a video")) == 21
    sampler = Sampler(model)

    def memory(**settings):
        return plan_memory(plan_generation(CONFIG, tok, "a red fox", VQ, GenerationSettings(**settings)), sampler)

    assert memory(samples=2) == expected(4, 256, 24)  # cfg 5: 2 conditional + 2 unconditional rows
    assert memory(samples=2, cfg=1.0) == expected(2, 256, 24)  # scale 1 runs no unconditional rows
    assert memory(frames=3, samples=2) == expected(4, 256, 24)  # later frames (cfg 1): 2 rows, frame 1 is the peak
    guided = plan_generation(CONFIG, tok, "a red fox", VQ, GenerationSettings(frames=3, samples=2, cfg_video=3.0))
    peak = expected(4, 256, 48)  # later frames guided: 4 rows of the 48-token chunk
    assert plan_memory(guided, sampler) == peak and plan_memory(guided, sampler, max_memory=peak) == peak
    with pytest.raises(LWMError, match=r"a context of 72 tokens x 4 rows \(2 sample\(s\), guided rows doubled\) "
                                       r"needs about .* over --max-memory .*; use fewer --frames"):
        plan_memory(guided, sampler, max_memory=peak - 1)
    assert sampler.compilations == 0  # refused from shapes alone: nothing compiled or sampled


def test_output_names_and_suffixes(tmp_path, monkeypatch):
    files, tokens = output_paths(tmp_path / "fire.gif", GenerationSettings(frames=2, samples=3), tmp_path / "t.npz")
    assert [f.name for f in files] == ["fire_0.gif", "fire_1.gif", "fire_2.gif"]
    assert [f.name for f in tokens] == ["t_0.npz", "t_1.npz", "t_2.npz"]
    assert output_paths(tmp_path / "a" / "fire.png", GenerationSettings())[0] == [tmp_path / "a" / "fire.png"]
    for out, tokens_out, message in [("x.jpg", None, "cannot write .jpg"), ("x.png", None, "a PNG holds one image"),
                                     ("x.mp4", "t.json", "token files end in .npz")]:
        with pytest.raises(LWMError, match=message):
            output_paths(tmp_path / out, GenerationSettings(frames=2), tokens_out and tmp_path / tokens_out)

    def read_only(self, data):  # chmod does not stop root (CI): fail writes as a read-only folder would
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(LWMError, match=f"cannot write the output in {tmp_path} \\(Permission denied\\)"):
        output_paths(tmp_path / "fire.png", GenerationSettings())


def test_pixels_are_truncated_as_lwm_writes_them():
    x = np.array([-1.0, -0.5, 0.0, 0.999, 1.0, 1.5], np.float32)
    # (x + 1) * 127.5 = 0, 63.75, 127.5, 254.87, 255, (clipped) 255 -> truncated
    assert lwm_uint8(x).tolist() == [0, 63, 127, 254, 255, 255]
