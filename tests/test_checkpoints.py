"""Training state, compiled steps and checkpoints: save, restore, restore for inference."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import training
from experiments.checkpoints import Checkpoints
from experiments.configs import get_config, override


def _state(steps_per_epoch=3, model="cnn"):
    config = override(get_config(), [f"model={model}", "batch_size=4", "epochs=2"])
    mesh = training.make_mesh(config)
    return config, mesh, training.create_train_state(config, 2, 1, steps_per_epoch, mesh)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.standard_normal((4, 8, 8, 1)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 2, 4), jnp.int32)}


def test_train_step_is_pure_and_compiled_once():
    config, _, state = _state()
    before = jax.tree.map(np.asarray, (state.params, state.model_state, state.opt_state))
    traces = training.train_step._cache_size()
    for i in range(3):
        state, m = training.train_step(state, _batch(i), training.temperature(config, i / 3))
        assert set(m) == {"loss", "accuracy", "finite"} and float(m["finite"]) == 1.0
    assert training.train_step._cache_size() - traces <= 1  # one compilation for every step
    assert int(state.step) == 3
    # every part of the state moved: parameters, batch statistics, optimizer, RNG count
    after = (state.params, state.model_state, state.opt_state)
    for old, new in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        assert old.shape == np.shape(new)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before[0]),
                                                     jax.tree.leaves(after[0])))
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before[1]),
                                                     jax.tree.leaves(after[1])))
    # the same steps from the same initial state give the same state (no hidden inputs)
    _, _, again = _state()
    for i in range(3):
        again, _ = training.train_step(again, _batch(i), training.temperature(config, i / 3))
    chex.assert_trees_all_equal(again.params, state.params)
    # eval_step reads the state and changes nothing
    probs = training.eval_step(state, _batch(5)["image"], 1.0)
    chex.assert_shape(probs, (4, 2))
    np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)


def test_progress_record_round_trips_through_json():
    progress = training.Progress(epoch=2, batch=5, iterator={"a": 1}, loss_sum=1.5, seen=5,
                              history=[{"epoch": 1, "val_auc": 0.5}], best_auc=0.5,
                              best_epoch=1)
    assert training.Progress(**dataclasses.asdict(progress)) == progress


def test_save_restore_and_restore_for_inference(tmp_path):
    config, mesh, state = _state()
    for i in range(2):
        state, _ = training.train_step(state, _batch(i), 1.0)
    ckpt = Checkpoints(tmp_path)
    Checkpoints.save(ckpt.latest, int(state.step),
                     {"model": state.model_item(), "train": state.train_item()}, {"epoch": 1})
    _, _, fresh = _state()
    items, meta = Checkpoints.restore(ckpt.latest, {"model": fresh.model_item(),
                                                    "train": fresh.train_item()})
    restored = fresh.with_items(**items)
    assert meta == {"epoch": 1} and int(restored.step) == 2
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, restored.params),
                                jax.tree.map(np.asarray, state.params))
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, restored.opt_state),
                                jax.tree.map(np.asarray, state.opt_state))
    # PRNG keys come back as keys, equal to the saved ones
    for a, b in zip(jax.tree.leaves(restored.rngs), jax.tree.leaves(state.rngs)):
        if jnp.issubdtype(b.dtype, jax.dtypes.prng_key):
            assert jnp.issubdtype(a.dtype, jax.dtypes.prng_key)
            np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))
    # inference: no optimizer anywhere, only the model item is read
    inference = training.create_train_state(config, 2, 1, None, mesh)
    assert inference.opt_state is None and inference.tx is None
    items, _ = Checkpoints.restore(ckpt.latest, {"model": inference.model_item()})
    inference = inference.with_items(items["model"])
    x = _batch(7)["image"]
    chex.assert_trees_all_close(training.eval_step(inference, x, 1.0),
                                training.eval_step(state, x, 1.0), atol=1e-6)
    with pytest.raises(ValueError, match="items: expected names among"):
        Checkpoints.save(ckpt.best, 1, {"optimizer": {}}, {})
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        Checkpoints.restore(ckpt.best, {"model": inference.model_item()})


def test_damaged_bytes_are_caught_by_the_saved_digests(tmp_path):
    """Bytes overwritten in a data file, or arrays that differ from the saved digest, stop
    the restore with one CheckpointError naming the folder (never wrong numbers)."""
    import json

    from experiments.checkpoints import CheckpointError

    _, _, state = _state()
    ckpt = Checkpoints(tmp_path)
    Checkpoints.save(ckpt.latest, 1, {"model": state.model_item()}, {"epoch": 1})
    step_dir = tmp_path / "checkpoints" / "latest" / "1"
    # a changed digest in the metadata: the arrays no longer match it
    meta_file = next(p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "meta")
    meta = json.loads(meta_file.read_text())
    assert set(meta["_sha256"]) == {"model"}
    meta["_sha256"]["model"] = "0" * 64
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"latest/1: the arrays of item 'model' do not "
                                              r"match the digest"):
        Checkpoints.restore(ckpt.latest, {"model": state.model_item()})
    # 8 bytes of 0xFF inside the array data (the largest data file): these load without
    # any error from orbax; the digest stops them
    Checkpoints.save(ckpt.best, 1, {"model": state.model_item()}, {"epoch": 1})
    data_files = [p for p in (tmp_path / "checkpoints" / "best" / "1" / "model").rglob("*")
                  if p.is_file() and p.parent.name == "d"]
    largest = max(data_files, key=lambda p: p.stat().st_size)
    raw = bytearray(largest.read_bytes())
    raw[len(raw) * 2 // 5:len(raw) * 2 // 5 + 8] = b"\xff" * 8
    largest.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="best/1: the arrays of item 'model' do not match"):
        Checkpoints.restore(ckpt.best, {"model": state.model_item()})
    # the meta handed back to callers has no digest entry
    Checkpoints.save(ckpt.best, 2, {"model": state.model_item()}, {"epoch": 2})
    assert Checkpoints.restore(ckpt.best, {"model": state.model_item()})[1] == {"epoch": 2}
