"""LLaVA-style conversations in LWM's chat template.

A record `{"vision": <codes or token file>, "conversations": [{"from": "human", "value": q1},
{"from": "gpt", "value": a1}, ...]}` (roles human/user and gpt/assistant, alternating, starting with
the human and ending with the assistant) becomes, each `enc` its own `tokenizer.encode` call:

    first turn  [bos] + enc("You are a helpful assistant. USER: {q1}\\n") + enc("<vision>") + frames
                + enc("</vision>") + enc(" ASSISTANT:") + enc(a1) + [eos]
    later turns enc("USER: {q}") + enc(" ASSISTANT:") + enc(a) + [eos]

The first turn is exactly LWM's chat prompt (`lwm_core.text.lwm_chat_segments`, the layout of
`vision_chat.py`) followed by the answer; LWM released no multi-turn layout, so later turns follow
Vicuna's (`</s>USER: ... ASSISTANT: ...`), without vision. Loss is on the answers and their EOS only.
Without a vision key the first turn is `[bos] + enc("You are a helpful assistant. USER: {q1}") +
enc(" ASSISTANT:") + ...`. With the processor's swap (`swap_prob`), the vision comes before the
question: `enc("You are a helpful assistant. USER:") + <vision span> + enc(q1) + enc(" ASSISTANT:")`.
`<image>` / `<video>` placeholders in the human turns are removed (the template fixes the place of the
vision). The vision is the record's `vision` key, else its one key whose name contains `vision`.
"""

from __future__ import annotations

import re

import numpy as np

from lwm_core.data.vision import BadRecord, is_vision_field
from lwm_core.text.prompts import SYSTEM

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_PLACEHOLDER = re.compile(r"\s*<(?:image|video)>\s*")


def _turns(record: dict) -> list[tuple[str, str]]:
    conv = record.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise BadRecord("`conversations` must be a non-empty list of {from, value} turns")
    turns = []
    for k, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or turn.get("from") not in ROLES:
            raise BadRecord(f"turn {k} is not {{'from': human|gpt, 'value': text}}")
        want = "user" if k % 2 == 0 else "assistant"
        if ROLES[turn["from"]] != want:
            raise BadRecord(f"turn {k} is from {turn['from']!r}; turns must alternate human, gpt, ...")
        turns.append((want, turn["value"]))
    if len(turns) % 2:
        raise BadRecord("the conversation ends with a human turn (no answer to learn)")
    return turns


def _vision_key(record: dict) -> str | None:
    if "vision" in record:
        return "vision"
    keys = sorted(k for k in record if is_vision_field(k))
    if len(keys) > 1:
        raise BadRecord(f"several vision keys {keys}; a conversation takes one")
    return keys[0] if keys else None


def conversation_example(processor, record: dict, *, base_dir=".", swap: bool = False):
    """(tokens, loss, vision) of a conversation record; see the module docstring for the layout."""
    enc = processor.tokenizer.encode
    bos, eos = processor.tokenizer.bos_id, processor.tokenizer.eos_id
    turns = _turns(record)
    key = _vision_key(record)
    pieces: list[tuple[np.ndarray, float, np.ndarray | None]] = []

    def put(ids, loss, mask=None):
        pieces.append((np.asarray(ids, np.int32), loss, mask))

    for k in range(0, len(turns), 2):
        question = _PLACEHOLDER.sub(" ", turns[k][1]).strip()
        answer = turns[k + 1][1]
        if k == 0:
            put([bos], 0.0)
            if key is None:
                put(enc(f"{SYSTEM} USER: {question}"), 0.0)
            else:
                span, mask = processor.vision_span(record, key, base_dir)
                if swap:
                    put(enc(f"{SYSTEM} USER:"), 0.0)
                    put(span, 0.0, mask)
                    put(enc(question), 0.0)
                else:
                    put(enc(f"{SYSTEM} USER: {question}\n"), 0.0)
                    put(span, 0.0, mask)
        else:
            put(enc(f"USER: {question}"), 0.0)
        put(enc(" ASSISTANT:"), 0.0)
        put(enc(answer), 1.0)
        put([eos], 1.0)
    tokens = np.concatenate([p[0] for p in pieces])
    loss = np.concatenate([np.full(len(p[0]), p[1], np.float32) for p in pieces])
    vis = np.concatenate([p[2] if p[2] is not None else np.zeros(len(p[0]), bool) for p in pieces])
    return tokens, loss, vis
