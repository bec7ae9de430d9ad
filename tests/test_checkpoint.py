"""Checkpoint retention and crash safety, on real Orbax checkpoints of a small state."""

import os
import shutil

import jax.numpy as jnp
import numpy as np

from zoo import checkpoint, workdir
from zoo.steps import SpikeStats, TrainState


def state(value):
    return TrainState(step=jnp.int32(value), params={"w": jnp.full((4, 3), value, jnp.float32)},
                      opt_state={"mu": jnp.zeros((3,))}, bad_steps=jnp.int32(0), spike_stats=SpikeStats.zeros())


def abstract():
    import jax
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state(0))


def test_keeps_the_last_n_and_the_best_by_validation_loss(tmp_path):
    saver = checkpoint.Checkpointer(str(tmp_path), keep=2)
    for step, loss in zip(range(1, 6), [5.0, 1.0, 4.0, 3.0, 2.5]):
        saver.save(step, state(step), {"batches": step}, valid_loss=loss)
        saver.wait()
    saver.close()
    assert checkpoint.Checkpointer(str(tmp_path)).all_steps() == [2, 4, 5]  # best (2) + last two


def test_an_interrupted_save_is_never_taken_as_latest(tmp_path):
    saver = checkpoint.Checkpointer(str(tmp_path))
    saver.save(1, state(1), {"batches": 1})
    saver.close()
    # What a process killed mid-save leaves behind: Orbax's temporary directory, never renamed
    # (simulated by copying a finished step under the temporary name, then truncating a file).
    root = os.path.join(tmp_path, workdir.CHECKPOINT_DIR)
    partial = os.path.join(root, "2.orbax-checkpoint-tmp-1764172800000000")
    shutil.copytree(os.path.join(root, "1"), partial)
    if os.path.exists(os.path.join(partial, "commit_success.txt")):
        os.remove(os.path.join(partial, "commit_success.txt"))
    reader = checkpoint.Checkpointer(str(tmp_path), read_only=True)
    assert reader.latest_step() == 1
    restored, position, step = reader.restore(abstract())
    assert (position, step) == ({"batches": 1}, 1)
    np.testing.assert_array_equal(restored.params["w"], np.full((4, 3), 1.0))


def test_keep_best_survives_a_restart_of_the_manager(tmp_path):
    # Orbax writes a step's metrics to disk only when best_fn is set: without them the manager of a
    # resumed run saw the earlier best checkpoint as unranked and deleted it.
    saver = checkpoint.Checkpointer(str(tmp_path), keep=1, async_save=False)
    for step, loss in [(2, 5.7), (4, 5.5), (6, 5.6)]:
        saver.save(step, state(step), {"batches": step}, loss)
    saver.close()
    assert saver.all_steps() == [4, 6]
    resumed = checkpoint.Checkpointer(str(tmp_path), keep=1, async_save=False)
    for step, loss in [(8, 9.0), (10, 7.0)]:
        resumed.save(step, state(step), {"batches": step}, loss)
    resumed.close()
    assert resumed.all_steps() == [4, 10]  # the best (4) and the latest
