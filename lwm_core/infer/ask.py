"""Answering questions about a video, an image or a folder of frames, token for token as LWM's chat
script would (its input, `lwm_core.infer.vision_prompt`), on the engine's sampler.

    asker = Asker(model, tokenizer, vqgan)                 # a vision-language LWMModel, load_tokenizer, load_vqgan
    media = asker.media("clip.mp4")                        # read + VQGAN-encode once (memoized per path)
    [answer] = asker.ask([("What happens?", media)])       # greedy by default
    answer.answer, answer.answer_ids, answer.prompt_ids

LWM's template puts the question BEFORE the video, so each question is its own prefill of the whole
input; only the reading and encoding of the video are shared. `chat` instead continues one
conversation, appending each follow-up turn (`lwm_chat_followup_ids`) to the same KV cache.
Several questions go through `ask` as one batch (left-padded rows, as the sampler does).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lwm_core.cache import bucket_length
from lwm_core.errors import LWMError
from lwm_core.infer import processors as lp
from lwm_core.infer.sampler import Sampler, SamplingSettings
from lwm_core.infer.vision_prompt import ChatInput, MediaCodes, chat_input, read_media_codes, vision_spec
from lwm_core.mesh import MESH_AXES, axis_size
from lwm_core.text.prompts import lwm_chat_followup_ids

TokenCallback = Callable[[int, int], None]  # (row, token id) for every answer token, as it is chosen


@dataclasses.dataclass(frozen=True)
class ContextPlan:
    """What a prefill will hold, stated before it runs: the longest prompt, the new tokens reserved
    after it, their sum (the context; must fit max_sequence_length), the KV cache slots allocated,
    and the estimated memory per device (weights + KV cache + one prefill chunk's activations)."""

    rows: int
    prompt_tokens: int
    new_tokens: int
    context_tokens: int
    cache_tokens: int
    memory_bytes: int


@dataclasses.dataclass
class Answer:
    question: str
    source: str
    answer: str
    answer_ids: list[int]  # generated ids, without the eos (ids past the tokenizer's vocabulary kept)
    prompt_ids: list[int]  # the model input without padding (vision ids included)
    vision_mask: np.ndarray  # [len(prompt_ids)] bool
    frames: list[int]  # source frame indices used
    context_tokens: int  # prompt + new tokens reserved
    stopped: str  # 'eos' or 'length' (max_new_tokens reached)
    timings: dict[str, float]  # seconds: read, vqgan (this video, once), prefill, decode
    media_origin: str  # 'encoded', 'memory' (an earlier question's) or 'cache-dir'

    def to_json(self) -> dict:
        m = np.asarray(self.vision_mask, bool)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], m.astype(np.int8), [0]])))
        decode_tps = (len(self.answer_ids) - 1) / self.timings["decode"] if self.timings["decode"] > 0 else None
        return {"question": self.question, "video": self.source, "answer": self.answer,
                "answer_ids": self.answer_ids, "prompt_ids": self.prompt_ids,
                "vision_spans": edges.reshape(-1, 2).tolist(), "frames": self.frames,
                "prompt_tokens": len(self.prompt_ids), "context_tokens": self.context_tokens,
                "stopped": self.stopped, "media": self.media_origin,
                "timings": {k: round(v, 6) for k, v in self.timings.items()},
                "decode_tokens_per_s": None if decode_tps is None else round(decode_tps, 3)}


def parse_memory(text: str) -> int:
    """'24GiB', '24G', '512MiB', '1.5T' or plain bytes -> bytes (powers of 1024)."""
    units = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    s = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = s[-1] if s and s[-1] in units else ""
    try:
        value = float(s[:len(s) - len(unit)])
    except ValueError:
        raise LWMError(f"cannot read memory size {text!r}; use e.g. 24GiB, 512MiB or a number of bytes") from None
    if value <= 0:
        raise LWMError(f"memory size must be positive, got {text!r}")
    return int(value * units[unit])


def estimate_memory(config, rows: int, cache_tokens: int, chunk: int, mesh=None) -> int:
    """Bytes per device for a prefill: weights and KV cache as laid out on `mesh`
    (`lwm_core.layout.plan_layout`), plus one chunk's activations (~ rows x chunk x (6 x hidden +
    3 x intermediate) floats: residual, q/k/v/out, the SwiGLU hidden). An estimate, not a measurement."""
    from lwm_core.layout import plan_layout

    shape = tuple(axis_size(mesh, a) for a in MESH_AXES) if mesh is not None else (1, 1, 1, 1)
    plan = plan_layout(config, shape, cache_length=cache_tokens, batch_size=rows)
    width = 6 * config.hidden_size + 3 * config.intermediate_size
    return int(plan["total_bytes_per_device"]) + rows * chunk * width * 4


class Asker:
    """Answers questions about media with one model, tokenizer and VQGAN.

    `frame_layout`: 'chat' (LWM's chat script: every frame ends with eov) or 'training' (eof between
    frames). `max_frames` / `fps`: frame sampling (LWM's linspace; fps samples by time first).
    `cache_dir`: keep each video's codes as a token file (see `read_media_codes`). `max_memory`:
    refuse a prefill whose estimated bytes per device exceed it. `chunk_size`: prefill tokens per step.
    """

    def __init__(self, model, tokenizer, vqgan, *, frame_layout: str | None = None, max_frames: int | None = 8,
                 fps: float | None = None, backend: str = "auto", cache_dir: str | os.PathLike | None = None,
                 chunk_size: int = 2048, max_memory: int | None = None):
        self.spec = vision_spec(model.config, vqgan.config)  # text-only model or mismatched VQGAN: refused here
        if tokenizer.vocab_size > model.config.vocab_size:
            raise LWMError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's text vocabulary only "
                           f"{model.config.vocab_size}; pass the tokenizer the checkpoint was trained with")
        self.model, self.tokenizer, self.vqgan = model, tokenizer, vqgan
        self.frame_layout = frame_layout or model.config.frame_layout  # None: what the model records
        self.max_frames, self.fps, self.backend = max_frames, fps, backend
        self.cache_dir, self.max_memory = cache_dir, max_memory
        self.sampler = Sampler(model, chunk_size=chunk_size)
        self._media: dict[Path, MediaCodes] = {}
        self.encoded = 0  # media read and VQGAN-encoded by this Asker (not from memory or cache_dir)

    # ---------------------------------------------------------------- inputs
    def media(self, path: str | os.PathLike, on_frames: Callable[[int, int], None] | None = None) -> MediaCodes:
        """The codes of a video, image or folder of frames; each path is read and encoded once."""
        key = Path(path).expanduser().resolve()
        if key in self._media:
            return dataclasses.replace(self._media[key], origin="memory")
        media = read_media_codes(path, self.vqgan, max_frames=self.max_frames, fps=self.fps, backend=self.backend,
                                 cache_dir=self.cache_dir, on_frames=on_frames)
        self.encoded += media.origin == "encoded"
        self._media[key] = media
        return media

    def prompt(self, question: str, media: MediaCodes) -> ChatInput:
        """LWM's chat input for `question` about `media`."""
        return chat_input(self.tokenizer, question, media.codes, self.spec, self.frame_layout)

    def plan(self, prompt_lengths: Sequence[int], new_tokens: int, what: str = "new tokens") -> ContextPlan:
        """The context of a prefill, refused in one line when it exceeds max_sequence_length or
        `max_memory`. `what` names `new_tokens` in the message."""
        cfg = self.model.config
        longest, limit = max(prompt_lengths), cfg.max_sequence_length
        if longest + new_tokens > limit:
            raise LWMError(f"the input is {longest} tokens (question, {self.spec.tokens_per_frame + 1} vision tokens "
                           f"per frame) + {new_tokens} {what} = {longest + new_tokens}, over the model's "
                           f"max_sequence_length {limit}; use fewer --max-frames, a shorter question or a smaller "
                           "--max-new-tokens")
        _, chunk, cache = self.sampler.plan(longest, new_tokens)
        memory = estimate_memory(cfg, len(prompt_lengths), cache, chunk, self.model.mesh)
        if self.max_memory is not None and memory > self.max_memory:
            raise LWMError(f"a context of {longest + new_tokens} tokens x {len(prompt_lengths)} rows needs about "
                           f"{memory / 2**30:.2f} GiB per device (weights, KV cache of {cache} slots, activations), "
                           f"over --max-memory {self.max_memory / 2**30:.2f} GiB; use fewer --max-frames, a smaller "
                           "--batch-size or a mesh with more devices")
        return ContextPlan(len(prompt_lengths), longest, new_tokens, longest + new_tokens, cache, memory)

    # ---------------------------------------------------------------- answering
    def _decode(self, token, cache, key, *, settings, max_new_tokens, rngs, on_token):
        """The decode loop after a prefill chose `token` [rows]: the text head picks every token,
        a row stops at eos. Returns (answers: id lists without eos, stopped: 'eos' / 'length' per
        row, cache, decode seconds). The last token chosen (eos, or the last answer token at the
        length cap) is never fed to the cache."""
        rows = int(token.shape[0])
        answers: list[list[int]] = [[] for _ in range(rows)]
        stopped = ["length"] * rows
        eos = self.tokenizer.eos_id
        start = time.perf_counter()
        for i in range(max_new_tokens):
            if i:
                token, cache = self.sampler.step(token, cache, key, is_vision=False, rng=rngs[i])
            chosen = np.asarray(token)
            for r in range(rows):
                if stopped[r] == "eos":
                    continue
                if int(chosen[r]) == eos:
                    stopped[r] = "eos"
                else:
                    answers[r].append(int(chosen[r]))
                    if on_token:
                        on_token(r, int(chosen[r]))
            if all(s == "eos" for s in stopped):
                break
        return answers, stopped, cache, time.perf_counter() - start

    def text(self, ids: Sequence[int]) -> str:
        """The answer's text. A model's vocabulary may be padded past the tokenizer's: such ids have no
        text and are left out (they stay in `answer_ids`)."""
        return self.tokenizer.decode_generated(ids)

    def _answers(self, items, prompts, answers, stopped, plan, prefill_s, decode_s) -> list[Answer]:
        out = []
        for (question, media), prompt, ids, stop in zip(items, prompts, answers, stopped, strict=True):
            timings = {"read": media.read_s, "vqgan": media.vqgan_s, "prefill": prefill_s, "decode": decode_s}
            out.append(Answer(question, media.source, self.text(ids), ids, prompt.ids.tolist(),
                              prompt.vision_mask, media.frames.tolist(), len(prompt.ids) + plan.new_tokens, stop,
                              timings, media.origin))
        return out

    def ask(self, items: Sequence[tuple[str, MediaCodes]], *, settings: SamplingSettings = SamplingSettings(),
            max_new_tokens: int = 512, seed: int = 0, on_token: TokenCallback | None = None,
            on_context: Callable[[ContextPlan], None] | None = None) -> list[Answer]:
        """Answer each (question, media) pair: one batch, each row its own full input."""
        if max_new_tokens < 1:
            raise LWMError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not items:
            raise LWMError("no questions to answer")
        prompts = [self.prompt(q, m) for q, m in items]
        plan = self.plan([len(p.ids) for p in prompts], max_new_tokens)
        if on_context:
            on_context(plan)
        start = time.perf_counter()
        token, cache, key, _ = self.sampler.prefill([p.ids for p in prompts],
                                                    vision_masks=[p.vision_mask for p in prompts],
                                                    max_new_tokens=max_new_tokens, settings=settings, seed=seed)
        token.block_until_ready()
        prefill_s = time.perf_counter() - start
        rngs = jax.random.split(jax.random.PRNGKey(seed), max_new_tokens)  # as Sampler.generate draws them
        answers, stopped, _, decode_s = self._decode(token, cache, key, settings=settings,
                                                     max_new_tokens=max_new_tokens, rngs=rngs, on_token=on_token)
        return self._answers(items, prompts, answers, stopped, plan, prefill_s, decode_s)

    def chat(self, media: MediaCodes, questions: Sequence[str], *, settings: SamplingSettings = SamplingSettings(),
             max_new_tokens: int = 512, seed: int = 0, on_token: TokenCallback | None = None,
             on_context: Callable[[ContextPlan], None] | None = None,
             on_turn: Callable[[int, Answer], None] | None = None) -> list[Answer]:
        """One conversation about `media`: the first question as `ask`, each later one appended to the
        same KV cache as `lwm_chat_followup_ids` after the previous answer. The cache is sized for every
        turn up front. `on_turn(i, answer)` runs after each turn; `on_token(0, id)` streams."""
        if not questions:
            raise LWMError("no questions to answer")
        first = self.prompt(questions[0], media)
        turns = [lwm_chat_followup_ids(self.tokenizer, q) for q in questions[1:]]
        widths = [bucket_length(len(t) + 1, minimum=16) for t in turns]  # + the last answer token, if unfed
        reserve = max_new_tokens * len(questions) + sum(widths)
        plan = self.plan([len(first.ids)], reserve, what=f"tokens for {len(questions)} answers and turns")
        if on_context:
            on_context(plan)
        conversation, vmask = first.ids.tolist(), first.vision_mask.tolist()
        answers: list[Answer] = []
        fed = 0  # conversation tokens the cache holds
        for turn, question in enumerate(questions):
            # turn 0 draws as `ask` does (so one question gives the same answer); later turns their own keys
            rng = jax.random.PRNGKey(seed) if turn == 0 else jax.random.fold_in(jax.random.PRNGKey(seed), turn)
            rngs = jax.random.split(rng, max_new_tokens)
            start = time.perf_counter()
            if turn == 0:
                token, cache, key, _ = self.sampler.prefill([first.ids], vision_masks=[first.vision_mask],
                                                            max_new_tokens=reserve, settings=settings, seed=seed)
            else:
                conversation += turns[turn - 1]
                vmask += [False] * len(turns[turn - 1])
                token, cache = self._append(conversation[fed:], widths[turn - 1], cache, settings, rngs[0])
            token.block_until_ready()
            prefill_s = time.perf_counter() - start
            ids, stopped, cache, decode_s = self._decode(token, cache, key, settings=settings,
                                                         max_new_tokens=max_new_tokens, rngs=rngs, on_token=on_token)
            prompt = ChatInput(np.asarray(conversation, np.int32), np.asarray(vmask, bool), first.num_frames)
            [answer] = self._answers([(question, media)], [prompt], ids, stopped,
                                     dataclasses.replace(plan, new_tokens=max_new_tokens), prefill_s, decode_s)
            answers.append(answer)
            # The cache holds the conversation up to the answer's last token, which was chosen but not
            # fed (nor was the eos); the next turn feeds it, then its eos, then the question.
            conversation += ids[0]
            vmask += [False] * len(ids[0])
            fed = len(conversation) - (stopped[0] == "length")
            if on_turn:
                on_turn(turn, answer)
        return answers

    def _append(self, ids: list[int], width: int, cache, settings: SamplingSettings, rng):
        """Feed text `ids` after what `cache` holds, left-padded to `width` slots (so turns of many
        lengths share one compilation; padded slots are masked and take no position), and choose the
        next token as the sampler's prefill does."""
        padded = np.zeros((1, width), np.int32)
        mask = np.zeros((1, width), bool)
        padded[0, width - len(ids):], mask[0, width - len(ids):] = ids, True
        text, _, cache = self.model.prefill(jnp.asarray(padded), cache, None, jnp.asarray(mask),
                                            chunk_size=self.sampler.chunk_size, last_only=True)
        token = lp.pick(settings.processor()(text[:, -1]), rng, greedy=settings.greedy)
        return token, cache
