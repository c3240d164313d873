"""Model configuration: one frozen dataclass with LWM's field names and LWM's presets.

Field names follow LWM's `LLaMAConfig` / `VideoLLaMAConfig` where they exist (`vocab_size`,
`hidden_size`, `scan_query_chunk_size`, ...); LWM's `theta` is called `rope_theta` here.

The fields fall into two groups. `ARCHITECTURE_FIELDS` say what the model is: a checkpoint stores
them and they must not change silently. `RUN_FIELDS` say how it is run this time (dtypes,
attention implementation, chunk sizes, layout, remat, scan): they are never stored in a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from lwm_core.errors import LWMError

# name -> (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads), from LWM.
_PRESETS: dict[str, tuple[int, int, int, int]] = {
    "debug": (256, 256, 2, 2),
    "200m": (1024, 2048, 14, 8),
    "1b": (2048, 5504, 22, 16),
    "3b": (3200, 8640, 26, 32),
    "7b": (4096, 11008, 32, 32),
    "13b": (5120, 13824, 40, 40),
}

# Published checkpoints: context name -> (rope_theta, max_sequence_length). '32k' is the first text
# stage of the training recipe; the others are the released LWM-Text models. Vision-language models
# use theta 5e7 at every context length.
CONTEXTS: dict[str, tuple[float, int]] = {
    "32k": (1e6, 32768),
    "128k": (1e7, 131072),
    "256k": (1e7, 262144),
    "512k": (2.5e7, 524288),
    "1m": (5e7, 1048576),
}
VISION_ROPE_THETA = 5e7

# What the model is: stored with a checkpoint (orbax `lwm_config.json`, HF `config.json`).
ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                       "num_attention_heads", "max_sequence_length", "rms_norm_eps", "initializer_range",
                       "rope_theta", "bos_token_id", "eos_token_id", "vision", "vision_vocab_size",
                       "vision_codes", "frame_layout")
# How it is run this time: taken from the caller, never from (or into) a checkpoint.
RUN_FIELDS = ("dtype", "param_dtype", "attention_impl", "scan_query_chunk_size", "scan_key_chunk_size",
              "scan_mlp_chunk_size", "sequence_layout", "remat_block", "scan_layers")
# Architecture fields a caller may change on purpose on top of a checkpoint's config (extend-context).
CHANGEABLE_FIELDS = ("rope_theta", "max_sequence_length")
# Architecture fields that only matter for random initialisation, so a checkpoint need not agree on them.
INIT_ONLY_FIELDS = ("initializer_range",)

ATTENTION_IMPLS = ("plain", "blockwise", "ring")
SEQUENCE_LAYOUTS = ("contiguous", "striped", "zigzag")
REMAT_POLICIES = ("", "nothing_saveable", "dots_saveable", "checkpoint_dots")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and execution choices of an LWM (LLaMA-2 style) model.

    Example: `ModelConfig.from_name("7b", context="1m")`, `ModelConfig.from_name("debug", vision=True)`.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    max_sequence_length: int = 2048
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    rope_theta: float = 10000.0
    bos_token_id: int = 1
    eos_token_id: int = 2
    # Vision-language model (LWM's VideoLLaMA): adds `vte` and `vision_head` of vision_vocab_size.
    vision: bool = False
    vision_vocab_size: int = 8448
    # The VQGAN codebook it reads: ids < vision_codes are codes, vision_codes is end-of-frame and
    # vision_codes + 1 end-of-vision (LWM: 8192 codes, 8192 / 8193; lwm-tiny: 512, 512 / 513).
    vision_codes: int = 8192
    # The frame layout `lwm ask` builds by default: 'chat' (LWM's chat script: every frame ends with
    # end-of-vision) or 'training' (end-of-frame between frames, what `lwm train --stage 2` trains on).
    frame_layout: str = "chat"
    # Numerics: `dtype` is the compute dtype, `param_dtype` the storage dtype of the weights.
    dtype: str = "float32"
    param_dtype: str = "float32"
    # Execution: attention implementation and LWM's chunk sizes, sequence layout for ring attention.
    attention_impl: str = "blockwise"  # "plain" is the [T, T] reference; "ring" shards over `sp`
    scan_query_chunk_size: int = 512
    scan_key_chunk_size: int = 512
    scan_mlp_chunk_size: int = 0  # 0: the MLP runs on the whole sequence at once.
    sequence_layout: str = "contiguous"
    # Rematerialisation of each decoder layer in the backward pass ("" = none).
    remat_block: str = ""
    # Layers stacked and run by lax.scan (fast compiles, training); False keeps one weight per layer,
    # which decodes faster on CPU. Checkpoints use the same (scanned) parameter dict either way.
    scan_layers: bool = True

    def __post_init__(self):
        positive = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "max_sequence_length", "scan_query_chunk_size",
                    "scan_key_chunk_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise LWMError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise LWMError(f"hidden_size {self.hidden_size} must divide by num_attention_heads "
                           f"{self.num_attention_heads}")
        if self.head_dim % 2:
            raise LWMError(f"head dim {self.head_dim} must be even for rotary embeddings")
        if self.scan_mlp_chunk_size < 0:
            raise LWMError("scan_mlp_chunk_size must be >= 0 (0 turns MLP chunking off)")
        if self.vision_codes < 1 or (self.vision and self.vision_vocab_size < self.vision_codes + 2):
            raise LWMError(f"vision_vocab_size {self.vision_vocab_size} must hold the {self.vision_codes} codes "
                           f"plus <eof>/<eov> ({self.vision_codes + 2} ids)")
        if self.frame_layout not in ("chat", "training"):
            raise LWMError(f"ModelConfig.frame_layout={self.frame_layout!r} is not 'chat' or 'training'")
        for name, allowed in (("attention_impl", ATTENTION_IMPLS), ("sequence_layout", SEQUENCE_LAYOUTS),
                              ("remat_block", REMAT_POLICIES), ("dtype", DTYPES),
                              ("param_dtype", DTYPES)):
            if getattr(self, name) not in allowed:
                raise LWMError(f"ModelConfig.{name}={getattr(self, name)!r} is not one of {allowed}")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise LWMError("rope_theta and rms_norm_eps must be positive")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_name(cls, name: str, *, context: str | None = None, vision: bool = False,
                  **overrides: Any) -> ModelConfig:
        """A preset by name ('debug', '200m', '1b', '3b', '7b', '13b'), optionally at a published
        context ('32k', '128k', '256k', '512k', '1m') and with the vision embeddings and head.

        A name may carry the context too: '7b-1m' is `from_name('7b', context='1m')`.
        """
        base, _, suffix = name.lower().partition("-")
        if suffix and context is None:
            context = suffix
        if base not in _PRESETS:
            raise LWMError(f"unknown model preset {name!r}; choose from {', '.join(_PRESETS)} "
                           f"(optionally with a context: {', '.join(CONTEXTS)}, e.g. '7b-1m')")
        hidden, inter, layers, heads = _PRESETS[base]
        fields: dict[str, Any] = dict(hidden_size=hidden, intermediate_size=inter,
                                      num_hidden_layers=layers, num_attention_heads=heads, vision=vision)
        if context is not None:
            key = context.lower()
            if key not in CONTEXTS:
                raise LWMError(f"unknown context {context!r}; choose from {', '.join(CONTEXTS)}")
            theta, length = CONTEXTS[key]
            fields.update(rope_theta=theta, max_sequence_length=length)
        if vision:
            fields["rope_theta"] = VISION_ROPE_THETA
        fields.update(overrides)
        return cls(**fields)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every field, architecture and run options alike."""
        return dataclasses.asdict(self)

    def architecture(self) -> dict[str, Any]:
        """What the model is (`ARCHITECTURE_FIELDS`): what a checkpoint stores."""
        return {name: getattr(self, name) for name in ARCHITECTURE_FIELDS}

    def run_options(self) -> dict[str, Any]:
        """How the model is run (`RUN_FIELDS`): never stored with a checkpoint."""
        return {name: getattr(self, name) for name in RUN_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LWMError(f"unknown ModelConfig fields {unknown}")
        return cls(**data)

    def to_json(self, *, run_options: bool = True) -> str:
        """JSON of every field; `run_options=False` writes the architecture only (for checkpoints)."""
        data = self.to_dict() if run_options else self.architecture()
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))

    def num_params(self) -> int:
        """Parameter count implied by the config (no memory is touched)."""
        d, f, n_layers, v = self.hidden_size, self.intermediate_size, self.num_hidden_layers, self.vocab_size
        per_layer = 4 * d * d + 3 * d * f + 2 * d
        total = 2 * v * d + n_layers * per_layer + d
        if self.vision:
            total += 2 * self.vision_vocab_size * d
        return total


if set(ARCHITECTURE_FIELDS) | set(RUN_FIELDS) != {f.name for f in dataclasses.fields(ModelConfig)} or \
        set(ARCHITECTURE_FIELDS) & set(RUN_FIELDS):  # a new field must be put in exactly one group
    raise AssertionError("ModelConfig fields must be split exactly into ARCHITECTURE_FIELDS and RUN_FIELDS")


def check_changes(changes: dict[str, Any] | None) -> dict[str, Any]:
    """`changes` without None values, typed, keys checked to be among `CHANGEABLE_FIELDS`."""
    changes = {k: v for k, v in (changes or {}).items() if v is not None}
    unknown = sorted(set(changes) - set(CHANGEABLE_FIELDS))
    if unknown:
        raise LWMError(f"cannot change {', '.join(unknown)} of a model's config; only "
                       f"{', '.join(CHANGEABLE_FIELDS)} may be changed on purpose")
    return {k: float(v) if k == "rope_theta" else int(v) for k, v in changes.items()}


def apply_changes(config: ModelConfig, changes: dict[str, Any] | None) -> ModelConfig:
    """`config` with `changes` (keys among `CHANGEABLE_FIELDS`; None values ignored) applied: the
    architecture changed on purpose, e.g. rope_theta and max_sequence_length for extend-context."""
    changes = check_changes(changes)
    return config.replace(**changes) if changes else config


RANDOM_PREFIX = "random:"  # `random:PRESET`: untrained random weights, for models and VQGANs alike


def random_config(spec: str, config: ModelConfig | str | None = None) -> ModelConfig:
    """The config of `random:PRESET` (e.g. 'random:debug', 'random:7b-1m') unless one is given: there
    is no stored checkpoint config, so a given config wins whole (architecture and run options)."""
    return resolve_config(config) or ModelConfig.from_name(spec[len(RANDOM_PREFIX):])


def resolve_config(config: ModelConfig | str | None, *, vision: bool = False) -> ModelConfig | None:
    """A ModelConfig, a preset name ('7b-1m', 'debug') or a path to a JSON ModelConfig.

    A preset gets the vision embeddings when `vision` is set (the checkpoint has them), since preset
    names only name the language model.
    """
    if config is None or isinstance(config, ModelConfig):
        return config
    path = Path(config).expanduser()
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise LWMError(f"config file {path} does not exist")
        try:
            return ModelConfig.from_json(path.read_text())
        except ValueError as exc:
            raise LWMError(f"{path} is not a ModelConfig JSON file ({exc})") from None
    return ModelConfig.from_name(config, vision=vision)
