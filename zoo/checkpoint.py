"""Orbax checkpoints of the train state and the data position, shared by train.py, eval.py and zoo.load.

A checkpoint is a step directory holding `state` (the sharded TrainState, written collectively by all
processes) and `data` (JSON: how many batches the iterator has produced). Orbax writes into a
temporary directory and renames it when complete, so a save interrupted by a kill is never listed
as a step. Restores go onto an abstract state whose shardings come from the *current* mesh, so a
checkpoint written on one mesh loads on any other.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from zoo.errors import ZooError
from zoo.workdir import CHECKPOINT_DIR


class CheckpointError(ZooError, RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


def _manager(workdir: str, keep: int = 3, async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
    """An Orbax manager keeping the last `keep` steps plus the one with the best validation loss."""
    preserve = policies.AnyPreservationPolicy([
        policies.LatestN(n=keep),
        policies.BestN(get_metric_fn=lambda m: -m["valid_loss"], n=1, keep_checkpoints_without_metrics=False),
    ])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=None if read_only else preserve, enable_async_checkpointing=async_save,
        # Orbax writes a step's metrics to disk only when best_fn is set; without them a resumed run's
        # manager sees earlier checkpoints as unranked, and keep-best deletes the best one.
        best_fn=lambda m: m["valid_loss"], best_mode="min",
        create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only)
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
    directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    try:  # the manager reads every step's metrics when it opens
        return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)
    except Exception as err:  # Orbax raises many types; all mean a damaged step directory
        raise CheckpointError(f"cannot open the checkpoints in {directory}: {_first_line(err)}; "
                              f"remove the damaged step directory") from err


class Checkpointer:
    """Save and restore (state, data position) in `workdir/checkpoints`."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True, read_only: bool = False):
        self.workdir = workdir
        self.manager = _manager(workdir, keep, async_save, read_only)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every complete checkpoint step, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_position: dict, valid_loss: float | None = None) -> None:
        """Start writing a checkpoint (asynchronously) with the data position as JSON (`zoo.data.DataState`);
        `valid_loss` ranks it for keep-best."""
        metrics = None if valid_loss is None else {"valid_loss": float(valid_loss)}
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_position)),
            metrics=metrics, force=True)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
        """(state, data position JSON, step) of `step` or the latest checkpoint, laid out like `abstract_state`."""
        step = self.latest_step() if step is None else step
        if step is None or step not in self.manager.all_steps():
            available = ", ".join(map(str, self.all_steps())) or "none"
            raise CheckpointError(f"no checkpoint for step {step} in {self.workdir} (available: {available})")
        self._check_params(step, abstract_state.params)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except Exception as err:  # Orbax raises many types; all mean the same thing to the user
            raise CheckpointError(f"cannot restore step {step} from {self.workdir}: "
                                  f"{_first_line(err)}") from err
        return restored["state"], dict(restored["data"]), step

    def restore_params(self, abstract_params: Any, step: int | None = None) -> Any:
        """Only the params of a checkpoint (for --init-from and inference), laid out like `abstract_params`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.workdir}")
        self._check_params(step, abstract_params)
        target = {"params": abstract_params}
        # The manager only knows the StandardCheckpointHandler the state was saved with, which cannot
        # restore part of a tree; a PyTree checkpointer reads the same files and can.
        path = os.path.join(str(self.manager.directory), str(step), "state")
        try:
            with ocp.PyTreeCheckpointer() as reader:
                restored = reader.restore(path, args=ocp.args.PyTreeRestore(
                    item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True))
        except Exception as err:
            raise CheckpointError(f"cannot restore params of step {step} from {self.workdir}: "
                                  f"{_first_line(err)}") from err
        return restored["params"]

    def _check_params(self, step: int, abstract_params: Any) -> None:
        """Raise CheckpointError naming the first parameter whose name or shape the model does not share."""
        try:
            stored = _shapes(self.manager.item_metadata(step)["state"]["params"])
        except Exception as err:
            raise CheckpointError(f"checkpoint step {step} in {self.workdir} is unreadable: "
                                  f"{_first_line(err)}") from err
        wanted = _shapes(abstract_params)
        for name in sorted(set(stored) | set(wanted)):
            if stored.get(name) != wanted.get(name):
                have = stored.get(name, "missing")
                raise CheckpointError(f"checkpoint parameter {name} is {have} but the model expects "
                                      f"{wanted.get(name, 'no such parameter')}; {self.workdir} holds "
                                      f"another model (use another --workdir)")

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def _shapes(tree: Any) -> dict[str, tuple]:
    """Parameter name ('layers/attn/w_q') -> shape, for arrays or their checkpoint metadata."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): tuple(leaf.shape)
            for path, leaf in flat}
