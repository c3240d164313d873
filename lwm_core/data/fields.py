"""Records -> examples with LWM's field syntax.

A field string is a comma list of fields; each field is record keys joined by `+` (their texts joined
with `separator`, a space as in LWM, and encoded as one piece); a field in brackets, `[question]`,
carries loss 0. Every piece is encoded on its own with `tokenizer.encode` (no special tokens per
piece). A leading BOS (loss 0) and a trailing EOS (loss 1) are added; `<|bos|>` / `<|eos|>` as a field
put one anywhere. `fields="text"` is the single field `text` with loss.

- `fields_from_example="fields"`: the record's own `fields` key gives its field string, or a LIST of
  field strings of which one is picked per record by an RNG seeded with the record's line number
  (LWM's only "random order swap"), e.g. `{"fields": ["[caption],vision", "[vision],caption"], ...}`.
- Any field whose name contains `vision` holds VQGAN codes (see `lwm_core.data.vision`); its span takes
  the field's loss mask, the vision mask covers codes and eof/eov only.
- `swap_prob` (ours): with this probability per record (seeded by seed, epoch and line), the field
  NAMES are taken in reverse order while every slot keeps its bracket, so `[caption],vision` (text to
  image) becomes `[vision],caption` (captioning). Records without a vision field are never swapped.
- The field `conversations` (a list of `{"from", "value"}` turns, LLaVA style) is built into LWM's chat
  template; see `lwm_core.data.chat`.

The loss mask of an example is per TOKEN: `loss[i]` is the weight of predicting token i from the
tokens before it (LWM's convention); the packer shifts it onto positions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from lwm_core.data.vision import BadRecord, VisionSpec, is_vision_field, vision_codes, vision_span
from lwm_core.errors import LWMError

BOS_FIELD, EOS_FIELD = "<|bos|>", "<|eos|>"


@dataclasses.dataclass
class Example:
    """One training example: tokens [L] int32, loss [L] float32 (weight of predicting each token),
    vision [L] bool (the token is a vision id), and where it came from (`ref`, for resumable state)."""

    tokens: np.ndarray
    loss: np.ndarray
    vision: np.ndarray
    ref: list | None = None

    def __post_init__(self):
        self.tokens = np.asarray(self.tokens, np.int32).reshape(-1)
        self.loss = np.asarray(self.loss, np.float32).reshape(-1)
        self.vision = np.asarray(self.vision, bool).reshape(-1)
        if not len(self.tokens) == len(self.loss) == len(self.vision):
            raise LWMError(f"example arrays differ in length: {len(self.tokens)}, {len(self.loss)}, "
                           f"{len(self.vision)}")

    def __len__(self) -> int:
        return len(self.tokens)


@dataclasses.dataclass(frozen=True)
class Field:
    keys: tuple[str, ...]  # record keys joined with the separator (or BOS_FIELD / EOS_FIELD)
    loss: float  # 0.0 in brackets, else 1.0


def parse_fields(spec: str) -> list[Field]:
    """`"[question+context],answer"` -> [Field(('question', 'context'), 0.0), Field(('answer',), 1.0)].
    ValueError for an empty field, unbalanced brackets or `+` joining a vision field."""
    fields = []
    for part in spec.split(","):
        part = part.strip()
        loss = 1.0
        if part.startswith("[") or part.endswith("]"):
            if not (part.startswith("[") and part.endswith("]")):
                raise ValueError(f"unbalanced brackets in field {part!r} of {spec!r}")
            part, loss = part[1:-1].strip(), 0.0
        keys = tuple(k.strip() for k in part.split("+"))
        if not all(keys):
            raise ValueError(f"empty field in {spec!r}")
        if len(keys) > 1 and any(is_vision_field(k) or k in (BOS_FIELD, EOS_FIELD) for k in keys):
            raise ValueError(f"`+` joins text keys only, not {part!r}")
        fields.append(Field(keys, loss))
    return fields


def swap_fields(fields: list[Field]) -> list[Field]:
    """Field names in reverse order, each slot keeping its loss: `[a],b` -> `[b],a`."""
    inner = [f for f in fields if f.keys[0] not in (BOS_FIELD, EOS_FIELD)]
    names = [f.keys for f in inner][::-1]
    it = iter(names)
    return [f if f.keys[0] in (BOS_FIELD, EOS_FIELD) else Field(next(it), f.loss) for f in fields]


class RecordProcessor:
    """Builds an `Example` from a record. `tokenizer` needs `encode(text)`, `bos_id` and `eos_id`;
    `vision` is a VisionSpec (None: LWM's published VQGAN, `VisionSpec.from_vqgan()`)."""

    def __init__(self, tokenizer, fields: str = "text", *, fields_from_example: str | None = None,
                 vision: VisionSpec | None = None, max_n_frames: int | None = None, swap_prob: float = 0.0,
                 seed: int = 0, add_bos: bool = True, add_eos: bool = True, separator: str = " "):
        if not 0.0 <= swap_prob <= 1.0:
            raise LWMError(f"swap_prob must lie in [0, 1], got {swap_prob}")
        if max_n_frames is not None and max_n_frames < 1:
            raise LWMError(f"max_n_frames must be positive, got {max_n_frames}")
        self.tokenizer, self.fields_from_example = tokenizer, fields_from_example
        self.vision = vision if vision is not None else VisionSpec.from_vqgan()
        self.max_n_frames, self.swap_prob, self.seed = max_n_frames, swap_prob, seed
        self.add_bos, self.add_eos, self.separator = add_bos, add_eos, separator
        try:
            self.fields = parse_fields(fields) if fields else None
        except ValueError as exc:
            raise LWMError(f"bad field string: {exc}") from None
        self._tags = (tokenizer.encode("<vision>"), tokenizer.encode("</vision>"))

    def rng(self, line: int, epoch: int, purpose: int) -> np.random.Generator:
        """The per-record RNG: seeded with (seed, epoch, line, purpose), so choices never depend on
        which records came before (resume, prefetch and sharding keep them)."""
        return np.random.default_rng([self.seed, epoch, line, purpose])

    def field_list(self, record: dict, line: int, epoch: int) -> list[Field]:
        spec = self.fields
        if self.fields_from_example and self.fields_from_example in record:
            value = record[self.fields_from_example]
            if isinstance(value, list):
                if not value or not all(isinstance(v, str) for v in value):
                    raise BadRecord(f"{self.fields_from_example!r} must be a field string or a non-empty list of them")
                value = value[int(self.rng(line, epoch, 0).integers(len(value)))]
            if not isinstance(value, str):
                raise BadRecord(f"{self.fields_from_example!r} must be a field string or a list of them")
            try:
                spec = parse_fields(value)
            except ValueError as exc:
                raise BadRecord(str(exc)) from None
        if spec is None:
            raise BadRecord(f"the record has no {self.fields_from_example!r} key and no fields were configured")
        if self.swap_prob and any(is_vision_field(f.keys[0]) for f in spec):
            if self.rng(line, epoch, 1).random() < self.swap_prob:
                spec = swap_fields(spec)
        return spec

    def __call__(self, record: dict, *, line: int = 0, epoch: int = 0, base_dir: str | Path = ".",
                 ref: list | None = None) -> Example:
        """BadRecord when the record does not fit the fields; LWMError for configuration problems."""
        fields = self.field_list(record, line, epoch)
        if any(f.keys == ("conversations",) for f in fields):
            from lwm_core.data.chat import conversation_example

            if len(fields) != 1:
                raise BadRecord("`conversations` must be the only field")
            swap = bool(self.swap_prob) and self.rng(line, epoch, 1).random() < self.swap_prob
            tokens, loss, vis = conversation_example(self, record, base_dir=base_dir, swap=swap)
            return Example(tokens, loss, vis, ref)
        tokens, loss, vis = [], [], []

        def put(ids, weight, mask=None):
            tokens.append(np.asarray(ids, np.int32))
            loss.append(np.full(len(ids), weight, np.float32))
            vis.append(np.zeros(len(ids), bool) if mask is None else mask)

        if self.add_bos:
            put([self.tokenizer.bos_id], 0.0)
        for field in fields:
            if field.keys[0] == BOS_FIELD:
                put([self.tokenizer.bos_id], field.loss)
            elif field.keys[0] == EOS_FIELD:
                put([self.tokenizer.eos_id], field.loss)
            elif is_vision_field(field.keys[0]):
                ids, mask = self.vision_span(record, field.keys[0], base_dir)
                put(ids, field.loss, mask)
            else:
                put(self.tokenizer.encode(self.separator.join(self.text(record, k) for k in field.keys)), field.loss)
        if self.add_eos:
            put([self.tokenizer.eos_id], 1.0)
        return Example(np.concatenate(tokens), np.concatenate(loss), np.concatenate(vis), ref)

    @staticmethod
    def text(record: dict, key: str) -> str:
        if key not in record:
            raise BadRecord(f"no key {key!r}")
        value = record[key]
        if not isinstance(value, str):
            raise BadRecord(f"{key!r} must be a string, got {type(value).__name__}")
        return value

    def vision_span(self, record: dict, key: str, base_dir) -> tuple[np.ndarray, np.ndarray]:
        if key not in record:
            raise BadRecord(f"no key {key!r}")
        codes = vision_codes(record[key], self.vision, base_dir=base_dir, max_n_frames=self.max_n_frames)
        return vision_span(codes, self.vision, *self._tags)
