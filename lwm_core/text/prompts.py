"""LWM's prompts as token ids, built the way LWM's `vision_chat.py` / `vision_generation.py` built them.

Chat (understanding an image or video), with N vision ids between the two segments:

    prefix = [bos] + enc("You are a helpful assistant. USER: {question}\\n") + enc("<vision>")
    suffix = enc("</vision>") + enc(" ASSISTANT:")   # SentencePiece sees '▁▁ASSISTANT:' (its space + the prefix)
    input  = prefix + vision_ids + suffix               # vision_ids from frames_to_vision_tokens, not tokenized

Generation: `[bos] + enc("You are a helpful assistant. USER: Generate an image of {prompt} ASSISTANT: <vision>")`
(one call; "a video of" for video), and the unconditional prompt for classifier-free guidance
`[bos] + enc("<vision>")`. Each `enc` is its own tokenizer call (its own dummy-prefix `▁`);
`<vision>`/`</vision>` are plain text, not special tokens. Exactly one BOS, never an EOS.

Follow-up turns of a conversation (`lwm ask --chat`; LWM's script has none) continue its Vicuna
template: the answer is closed with eos, then `enc("USER: {question}") + enc(" ASSISTANT:")`, so
the conversation reads `...ASSISTANT: {answer}</s>USER: {question} ASSISTANT:` as Vicuna's does.
"""

from __future__ import annotations

from lwm_core.text.tokenizer import Tokenizer

SYSTEM = "You are a helpful assistant."


def lwm_chat_segments(tokenizer: Tokenizer, question: str) -> tuple[list[int], list[int]]:
    """(prefix_ids, suffix_ids) around the vision ids of an LWM chat input: the model reads
    `prefix_ids + vision_ids + suffix_ids` and answers after it.

    The question goes through `encode_prompt`, as in LWM (which tokenized "<s>...{question}\\n" in one
    call): a literal `</s>` typed in the question becomes the eos id there too."""
    prefix = [tokenizer.bos_id] + tokenizer.encode_prompt(f"{SYSTEM} USER: {question}\n") + tokenizer.encode("<vision>")
    suffix = tokenizer.encode("</vision>") + tokenizer.encode(" ASSISTANT:")
    return prefix, suffix


def lwm_generation_prompt_ids(tokenizer: Tokenizer, prompt: str, video: bool = False) -> list[int]:
    """LWM's text-to-image (or, `video=True`, text-to-video) prompt; the model's next ids are vision ids."""
    what = "a video" if video else "an image"
    text = f"{SYSTEM} USER: Generate {what} of {prompt} ASSISTANT: <vision>"
    return [tokenizer.bos_id] + tokenizer.encode_prompt(text)


def lwm_unconditional_prompt_ids(tokenizer: Tokenizer) -> list[int]:
    """The unconditional prompt `<s><vision>` that LWM pairs with each generation prompt for
    classifier-free guidance: `[bos] + encode("<vision>")`."""
    return [tokenizer.bos_id] + tokenizer.encode("<vision>")


def lwm_chat_followup_ids(tokenizer: Tokenizer, question: str) -> list[int]:
    """A follow-up turn after an answer: `[eos] + encode_prompt("USER: {question}") + encode(" ASSISTANT:")`.

    The eos closes the previous answer (the model stops there, so its cache never holds it); the
    question goes through `encode_prompt` as in the first turn, ` ASSISTANT:` is its own call as there."""
    return [tokenizer.eos_id] + tokenizer.encode_prompt(f"USER: {question}") + tokenizer.encode(" ASSISTANT:")
