"""LongVA's visual needle (V-NIAH) for LWM's vision-language models: a haystack video sampled at 1
frame a second, one needle image inserted as an extra frame at a depth, a question about the needle
with a short answer; a grid of frame counts x depths, scored by greedy generation (the answer appears
in the response) or teacher-forced (the argmax at every answer position is the answer's token).

    codes = read_media_codes("haystack.mp4", vqgan, max_frames=3000, fps=1.0).codes   # [M, tpf]
    needle = read_media_codes("needle.png", vqgan, max_frames=1).codes                 # [1, tpf]
    settings = VisualSettings(frame_counts=(64, 256), depths=(0, 50, 100), question="...", answer="...")
    records = run_visual(sampler, tok, spec, codes, needle, settings, "vniah.json")

At LWM's 257 tokens a frame, 3000 frames are 771K tokens. The prompt is LWM's chat input
(`lwm_core.infer.vision_prompt.chat_input`): the question before `<vision>`, the frames, `</vision>`,
` ASSISTANT:`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from lwm_core.errors import LWMError
from lwm_core.evals.runner import read_results, record_key, write_results

SCORING = ("generate", "teacher-forced")


@dataclasses.dataclass(frozen=True)
class VisualSettings:
    frame_counts: tuple[int, ...]  # haystack frames per cell (the needle frame comes on top)
    depths: tuple[float, ...]
    question: str
    answer: str
    scoring: str = "generate"
    max_new_tokens: int = 32
    batch_size: int = 4
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "frame_counts", tuple(sorted(int(n) for n in self.frame_counts)))
        object.__setattr__(self, "depths", tuple(float(d) for d in self.depths))
        if self.scoring not in SCORING:
            raise LWMError(f"--score must be one of {', '.join(SCORING)}, got {self.scoring!r}")
        if not self.frame_counts or self.frame_counts[0] < 1:
            raise LWMError("--frames needs positive frame counts, e.g. '8,32,128'")
        if not self.question.strip() or not self.answer.strip():
            raise LWMError("the visual needle needs --question and --answer (the needle image's short answer)")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise LWMError("--max-new-tokens and --batch-size must be at least 1")

    def trials(self) -> list[tuple[int, float, int]]:
        return [(n, d, 0) for n in self.frame_counts for d in self.depths]

    def key(self, frames: int, depth: float, round_index: int) -> tuple:
        return ("visual", 1, 1, self.seed, int(frames), float(depth), int(round_index))


def needle_frame(frames: int, depth_percent: float) -> int:
    """Index of the needle among `frames` + 1 frames: `depth_percent` of the way through the haystack."""
    return int(round(frames * depth_percent / 100))


def visual_prompt(tokenizer, spec, haystack_codes: np.ndarray, needle_codes: np.ndarray, frames: int,
                  depth_percent: float, question: str):
    """(ChatInput, token index where the needle frame starts): the first `frames` haystack frames with
    the needle frame inserted at the depth. Raises LWMError when the haystack has fewer frames."""
    from lwm_core.infer.vision_prompt import chat_input

    if frames > len(haystack_codes):
        raise LWMError(f"the haystack video gives {len(haystack_codes)} frames at the sampling rate, fewer than "
                       f"the {frames} asked; use a longer video or smaller --frames")
    at = needle_frame(frames, depth_percent)
    codes = np.concatenate([haystack_codes[:at], needle_codes[:1], haystack_codes[at:frames]])  # [frames + 1, tpf]
    prompt = chat_input(tokenizer, question, codes, spec)
    first_vision = int(np.argmax(prompt.vision_mask))
    return prompt, first_vision + at * (spec.tokens_per_frame + 1)


def teacher_forced(model, prompt_ids, vision_mask, answer_ids) -> bool:
    """LongVA's teacher-forced score: with the answer appended, the argmax at every answer position
    (of the text head) is that answer token."""
    import jax.numpy as jnp

    ids = np.concatenate([prompt_ids, answer_ids]).astype(np.int32)
    mask = np.concatenate([vision_mask, np.zeros(len(answer_ids), bool)])
    picks = np.asarray(_argmax_forward(model, jnp.asarray(ids[None]), jnp.asarray(mask[None])))[0]  # [T]
    start = len(prompt_ids) - 1  # the logits at position t predict token t + 1
    return bool((picks[start:start + len(answer_ids)] == np.asarray(answer_ids)).all())


def _argmax_forward(model, ids, mask):
    """Text-head argmax at every position [B, T] of one full forward pass, compiled once per shape
    (the trials of one frame count share it)."""
    from flax import nnx

    global _ARGMAX
    if _ARGMAX is None:
        import jax.numpy as jnp

        _ARGMAX = nnx.jit(lambda m, i, v: jnp.argmax(m(i, vision_masks=v)[0], axis=-1))
    return _ARGMAX(model, ids, mask)


_ARGMAX = None


def run_visual(sampler, tokenizer, spec, haystack_codes, needle_codes, settings: VisualSettings, out_path, *,
               on_batch: Callable[[list[dict], int, int], None] | None = None) -> list[dict]:
    """Every trial of `settings` not already in `out_path`, one record each (as `run_needle`:
    `context_length` is the frame count here, `frames` too), rewritten atomically after each batch."""
    from lwm_core.infer import SamplingSettings

    records = read_results(out_path)
    finished = {record_key(r) for r in records}
    pending = [t for t in settings.trials() if settings.key(*t) not in finished]
    total, done = len(settings.trials()), len(settings.trials()) - len(pending)
    answer_ids = np.asarray(tokenizer.encode(settings.answer), np.int32)
    batches = []
    for n in settings.frame_counts:
        mine = [t for t in pending if t[0] == n]
        batches += [mine[i:i + settings.batch_size] for i in range(0, len(mine), settings.batch_size)]
    for batch in batches:
        prompts = [visual_prompt(tokenizer, spec, haystack_codes, needle_codes, n, d, settings.question)
                   for n, d, _ in batch]
        new = []
        start = time.perf_counter()
        if settings.scoring == "generate":
            rows = [p.ids for p, _ in prompts] + [prompts[0][0].ids] * (settings.batch_size - len(prompts))
            masks = [p.vision_mask for p, _ in prompts]
            masks += [masks[0]] * (settings.batch_size - len(prompts))
            out = sampler.generate(rows, vision_masks=masks, max_new_tokens=settings.max_new_tokens,
                                   settings=SamplingSettings(), eos_token_id=tokenizer.eos_id)
            responses = []
            for row in range(len(batch)):
                ids = out.tokens[row, :out.lengths[row]]
                responses.append(tokenizer.decode_generated(ids))
            correct = [settings.answer.lower() in r.lower() for r in responses]
        else:
            responses = [""] * len(batch)
            correct = [teacher_forced(sampler.model, p.ids, p.vision_mask, answer_ids) for p, _ in prompts]
        elapsed = round(time.perf_counter() - start, 4)
        for (n, d, r), (prompt, position), response, ok in zip(batch, prompts, responses, correct, strict=True):
            new.append({"task": "visual", "context_length": n, "frames": n, "context_tokens": len(prompt.ids),
                        "depth_percent": d, "round": r, "seed": settings.seed, "needles": 1, "retrieve": 1,
                        "needle_positions": [position], "needle_frame": needle_frame(n, d),
                        "question": settings.question, "answer": settings.answer, "response": response,
                        "correct": ok, "scoring": settings.scoring, "time_s": elapsed})
        records += new
        write_results(out_path, records)
        done += len(new)
        if on_batch:
            on_batch(new, done, total)
    return records
