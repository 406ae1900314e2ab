"""Keras 3 ``model.fit`` under ckptd (needs the ``keras`` extra; any backend).

    from ckptd_client.keras import CkptdCallback, restore
    restore(model)                       # weights + optimizer + epoch, or a no-op on a fresh start
    model.fit(..., callbacks=[CkptdCallback()])

A ckptd request is answered at the end of the next training batch: Keras' own
``model.save_weights`` (the model's and the optimizer's variables) writes
``model.weights.h5`` straight into the directory ckptd hands out, beside
``progress.json`` (the epoch to start at and the step), committed as ``step-N``,
N = the optimizer's ``iterations``, with the batch's logs (``loss``, metrics). A stop
(SIGTERM, STOP, preemption) is that save followed by ``model.stop_training``, so
``fit`` returns normally; a stop without a checkpoint (``ckptd stop --no-checkpoint``)
saves nothing.

Resuming restores every variable, so the step count and the optimizer's moments go on
from the checkpoint; like Keras' ``BackupAndRestore``, ``fit`` then starts the
interrupted epoch again from its first batch. Retention is ckptd's (``keep_last``,
``keep_best``). One process only: Keras' distribution API (``keras.distribution``) is
not supported, and the callback refuses to run on several ranks (``WORLD_SIZE`` > 1).
"""

from __future__ import annotations

import json
import os
from typing import Any

from ._client import Client
from ._frameworks import checkpoint_file, missing_framework, numeric_metrics
from ._frameworks import shared_client as _shared_client
from .protocol import ENV_WORLD_SIZE
from .store import Checkpoint

try:
    import keras
except ModuleNotFoundError as _error:
    _missing = missing_framework(_error, "keras", "keras")
    if _missing is None:
        raise
    raise _missing from None

__all__ = ["PROGRESS_FILE", "WEIGHTS_FILE", "CkptdCallback", "restore"]

WEIGHTS_FILE = "model.weights.h5"
PROGRESS_FILE = "progress.json"


class CkptdCallback(keras.callbacks.Callback):
    """Turns ckptd requests into Keras saves of the model and optimizer, committed by ckptd.

    Per batch it reads two flags of the client (no syscall, no lock) and adds two
    integers; the optimizer's step counter is read once per epoch. A save that fails
    to commit raises in ``fit``; earlier checkpoints stay valid.
    """

    def __init__(self, client: Client | None = None) -> None:
        super().__init__()
        _one_process_only()
        # Connect now, not at fit start: ckptd knows the job is alive from here on.
        self.client = _shared_client(client)
        self._epoch = 0
        self._epoch_start_step = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._epoch_start_step = int(self.model.optimizer.iterations)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        ck = self.client
        step = self._epoch_start_step + batch + 1  # the optimizer's iterations after this batch
        ck.step(step)
        if ck.should_checkpoint():
            self._save(step, batch, logs)
        if ck.should_stop():  # the final save (if one was wanted) is done: the client saw to it
            self.model.stop_training = True

    def _save(self, step: int, batch: int, logs: dict[str, Any] | None) -> None:
        with self.client.checkpoint(step, metrics=numeric_metrics(logs or {})) as directory:
            self.model.save_weights(str(directory / WEIGHTS_FILE))
            steps_per_epoch = (self.params or {}).get("steps")
            epoch_done = steps_per_epoch is not None and batch + 1 >= steps_per_epoch
            # The epoch fit starts at on resume: an interrupted one is started again.
            progress = {"epoch": self._epoch + 1 if epoch_done else self._epoch, "step": step}
            (directory / PROGRESS_FILE).write_text(json.dumps(progress))


def _one_process_only() -> None:
    world = os.environ.get(ENV_WORLD_SIZE, "1")
    if world.strip() not in ("", "0", "1"):
        raise RuntimeError(
            f"ckptd_client.keras runs in one process only, not on {world} ranks (WORLD_SIZE): "
            "Keras' distribution API is not supported"
        )


def restore(model: keras.Model, client: Client | None = None) -> Checkpoint | None:
    """Load the newest ckptd checkpoint that verifies into ``model``; None on a fresh start.

    ``model`` must be built and compiled (its optimizer's variables are created here
    when they do not exist yet). Loads the model's and the optimizer's variables and
    makes the next ``fit`` start at the saved epoch. Under ckptd this is the checkpoint
    the daemon verified before the launch (a corrupt newer one was skipped). A
    checkpoint not saved by this callback is a one-line ``ValueError``.
    """
    _one_process_only()
    last = _shared_client(client).restore()
    if last is None:
        return None
    weights = checkpoint_file(last.path, WEIGHTS_FILE, "Keras")
    progress = json.loads(checkpoint_file(last.path, PROGRESS_FILE, "Keras").read_text())
    if not model.built:
        raise ValueError("ckptd_client.keras.restore: build the model before restoring into it")
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(str(weights))
    model._initial_epoch = int(progress["epoch"])  # what Keras' own BackupAndRestore sets
    return last
