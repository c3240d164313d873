"""The sharded engine end to end: weights built or read on their shards, logits on several meshes equal
one device, chunked prefill equals one-shot prefill, a follow-up prompt appended to a filled cache,
sharded decoding equals single-device decoding, and one-line errors for bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lwm_core import LWMError, ModelConfig, load_model, make_mesh, save_params
from lwm_core.infer import Sampler

# 4 heads of 12 (tp=2 divides them), prime-ish other sizes so a transposed axis fails loudly.
TINY = ModelConfig(vocab_size=97, hidden_size=48, intermediate_size=88, num_hidden_layers=3, num_attention_heads=4,
                   max_sequence_length=256, initializer_range=0.1, rope_theta=5e4)
TOL = 1e-5


def _ids(batch, length, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(3, 97, (batch, length)), jnp.int32)


def _forward(model, ids, **kw):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, i: nnx.merge(graphdef, s)(i, **kw)[0])(state, ids)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The same tiny weights saved in every format, and the single-device reference logits."""
    folder = tmp_path_factory.mktemp("ckpt")
    model = load_model("random:debug", TINY)
    params = model.params_dict()
    specs = {"lwm": f"params::{folder / 'w.msgpack'}", "hf": f"hf::{folder / 'hf'}", "orbax": f"orbax::{folder / 'ob'}"}
    for spec in specs.values():
        save_params(params, spec, config=TINY)
    return specs, np.asarray(_forward(model, _ids(2, 24)))


@pytest.mark.parametrize("fmt", ["lwm", "hf", "orbax"])
@pytest.mark.parametrize("mesh_spec", ["1,4,1,2", "1,2,2,2"])
def test_every_format_loads_onto_a_mesh_with_single_device_logits(checkpoints, fmt, mesh_spec):
    specs, reference = checkpoints
    mesh = make_mesh(mesh_spec)
    model = load_model(specs[fmt], TINY if fmt == "lwm" else None, mesh=mesh)
    wq = model.transformer.h.scan_decoder.attention.wq.kernel[...]
    assert wq.sharding.mesh == mesh and wq.sharding.spec == P(None, "fsdp", "tp" if mesh_spec == "1,2,2,2" else None)
    np.testing.assert_allclose(np.asarray(_forward(model, _ids(2, 24))), reference, atol=TOL, rtol=TOL)


def test_random_weights_on_a_mesh_equal_single_device_ones():
    one = load_model("random:debug", TINY)
    sharded = load_model("random:debug", TINY, mesh=make_mesh("1,2,2,2"))
    for key, value in one.params_dict().items():
        np.testing.assert_array_equal(sharded.params_dict()[key], value, err_msg=key)


@pytest.mark.slow
def test_random_1b_on_fsdp8_holds_an_eighth_of_every_large_weight_per_device():
    model = load_model("random:1b", mesh=make_mesh("1,8,1,1"), param_dtype="bfloat16")
    large = [(path, var[...]) for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))
             if var[...].size >= 1 << 20]
    names = sorted("/".join(map(str, path)) for path, _ in large)
    assert names == ["lm_head/kernel", *(f"transformer/h/scan_decoder/{w}/kernel" for w in (
        "attention/wk", "attention/wo", "attention/wq", "attention/wv", "feed_forward/w1", "feed_forward/w2",
        "feed_forward/w3")), "transformer/wte/embedding"]
    for path, array in large:
        shards = array.addressable_shards
        assert len(shards) == 8, path
        for shard in shards:
            assert shard.data.size * 8 == array.size, (path, shard.data.shape, array.shape)
        pieces = {tuple((i.start, i.stop) for i in shard.index) for shard in shards}
        assert len(pieces) == 8, path  # eight different pieces, none replicated


def test_a_mesh_whose_tp_does_not_divide_the_heads_is_refused():
    with pytest.raises(LWMError, match="4 attention heads do not divide over tp=8"):
        load_model("random:debug", TINY, mesh=make_mesh("1,1,8,1"))


def _extend_fn(model):
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, ids, cache, mask: nnx.merge(graphdef, s).extend(ids, cache, attention_mask=mask))
    return lambda ids, cache, mask=None: fn(state, ids, cache, mask)


@pytest.mark.slow
def test_prefill_and_20_decode_steps_on_mesh_1_1_2_4_equal_single_device():
    ids = _ids(2, 30, seed=3)
    mask = jnp.asarray(np.arange(10)[None, :] >= np.array([[0], [3]]))  # row 1 left-padded by 3
    runs = {}
    for name, mesh in (("one", None), ("mesh", make_mesh("1,1,2,4"))):
        model = load_model("random:debug", TINY, mesh=mesh)
        extend = _extend_fn(model)
        cache = model.init_cache(2, 64)
        logits, _, cache = extend(ids[:, :10], cache, mask)
        steps = [logits]
        for t in range(10, 30):
            logits, _, cache = extend(ids[:, t:t + 1], cache)
            steps.append(logits)
        runs[name] = (np.concatenate([np.asarray(s) for s in steps], axis=1), cache)
    (ref, _), (got, cache) = runs["one"], runs["mesh"]
    real = np.concatenate([np.asarray(mask), np.ones((2, 20), bool)], axis=1)
    np.testing.assert_allclose(got[real], ref[real], atol=TOL, rtol=TOL)
    # [L, B, H, S, Dh]: heads over tp, slots over sp (LOGICAL_AXIS_RULES: heads -> tp, cache_seq -> sp)
    expected = NamedSharding(make_mesh("1,1,2,4"), P(None, None, "tp", "sp", None))
    assert cache.k.sharding.is_equivalent_to(expected, 5) and cache.v.sharding.is_equivalent_to(expected, 5)
    assert int(cache.length) == 30


def test_chunked_prefill_equals_one_shot_prefill():
    model = load_model("random:debug", TINY)
    ids = _ids(2, 61, seed=4)
    mask = jnp.asarray(np.arange(61)[None, :] >= np.array([[0], [7]]))
    one, _, cache_one = model.prefill(ids, model.init_cache(2, 96), attention_mask=mask)
    chunked, _, cache_chunked = model.prefill(ids, model.init_cache(2, 96), attention_mask=mask, chunk_size=8)
    real = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(chunked)[real], np.asarray(one)[real], atol=TOL, rtol=TOL)
    full = np.asarray(model(ids, attention_mask=mask)[0])
    np.testing.assert_allclose(np.asarray(chunked)[real], full[real], atol=TOL, rtol=TOL)
    np.testing.assert_allclose(np.asarray(cache_chunked.k), np.asarray(cache_one.k), atol=TOL, rtol=TOL)
    # the next token decodes the same from both caches
    nxt = ids[:, :1]
    a = model.decode(nxt, cache_one)[0]
    b = model.decode(nxt, cache_chunked)[0]
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=TOL, rtol=TOL)


def test_a_second_prompt_appended_to_a_filled_cache_equals_prefilling_both_at_once():
    model = load_model("random:debug", TINY)
    first, second = _ids(1, 19, seed=5), _ids(1, 12, seed=6)
    both = jnp.concatenate([first, second], axis=1)
    ref, _, _ = model.prefill(both, model.init_cache(1, 64), chunk_size=8)
    _, _, cache = model.prefill(first, model.init_cache(1, 64), chunk_size=8)
    turn, _, cache = model.prefill(second, cache, chunk_size=5)  # a follow-up turn
    np.testing.assert_allclose(np.asarray(turn), np.asarray(ref)[:, 19:], atol=TOL, rtol=TOL)
    assert int(cache.length) == 31 and int(cache.next_position[0]) == 31


def test_out_of_vocabulary_ids_are_refused_eagerly_in_jit_and_by_the_sampler():
    model = load_model("random:debug", TINY.replace(vision=True))
    bad = jnp.asarray([[1, 5, 97]], jnp.int32)
    with pytest.raises(LWMError, match="token id 97 is outside the model's vocabulary"):
        model(bad)
    with pytest.raises(jax.errors.JaxRuntimeError, match="token id 97 is outside"):
        jax.block_until_ready(_forward(model, bad))
    # a vision id may go up to the vision vocabulary, but not past it
    vision = jnp.asarray([[True, True, True]])
    assert np.isfinite(np.asarray(model(bad, vision_masks=vision)[0])).all()
    with pytest.raises(LWMError, match="token id 9000"):
        model(jnp.asarray([[1, 5, 9000]]), vision_masks=vision)
    with pytest.raises(LWMError, match="prompt 0: token id -1 at position 1 is outside the text vocabulary"):
        Sampler(model).generate([[1, -1]], max_new_tokens=2)


def test_decoding_past_the_end_of_a_jitted_cache_is_an_error():
    model = load_model("random:debug", TINY)
    extend = _extend_fn(model)
    _, _, cache = extend(_ids(1, 14), model.init_cache(1, 16))
    _, _, cache = extend(_ids(1, 2), cache)  # exactly full
    with pytest.raises(jax.errors.JaxRuntimeError, match="KV cache full: 16 \\+ 1 tokens exceed its 16 slots"):
        jax.block_until_ready(extend(_ids(1, 1), cache))
    with pytest.raises(LWMError, match="KV cache full"):
        model.decode(_ids(1, 1), cache)


def test_cli_runs_a_forward_pass_on_a_mesh_and_refuses_bad_meshes_in_one_line():
    from typer.testing import CliRunner

    from lwm_cli.main import app

    runner = CliRunner()
    ok = runner.invoke(app, ["info", "--checkpoint", "random:debug", "--mesh", "1,2,2,2", "--forward", "64",
                             "--json"])
    assert ok.exit_code == 0, ok.output
    for args, message in ((["--mesh", "1,1,8,1"], "2 attention heads"),  # debug has 2 heads
                          (["--mesh", "1,1,1,16"], "needs 16 devices")):
        bad = runner.invoke(app, ["info", "--checkpoint", "random:debug", "--forward", "64", *args])
        assert bad.exit_code == 2 and message in bad.output, bad.output
        assert "Traceback" not in bad.output


def test_cli_turns_an_error_raised_inside_jit_into_one_line(monkeypatch):
    import typer

    from lwm_cli.common import handle_errors

    model = load_model("random:debug", TINY)

    @handle_errors
    def command():
        jax.block_until_ready(_forward(model, jnp.asarray([[1, 500]])))

    with pytest.raises(typer.Exit) as exit_info:
        command()
    assert exit_info.value.exit_code == 2
