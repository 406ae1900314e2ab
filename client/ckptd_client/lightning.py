"""PyTorch Lightning ``Trainer`` under ckptd (needs the ``lightning`` extra).

    from ckptd_client.lightning import CkptdCallback, resume_path
    trainer = L.Trainer(..., callbacks=[CkptdCallback()])
    trainer.fit(model, ckpt_path=resume_path())             # None on a fresh start

A ckptd request is answered at the end of the next training batch: Lightning's own
``trainer.save_checkpoint`` writes ``model.ckpt`` straight into the directory ckptd
hands out, committed as ``step-N``, N = ``trainer.global_step``, with the logged
metrics (``trainer.callback_metrics``). A stop (SIGTERM, STOP, preemption) is that
save followed by ``trainer.should_stop``, so ``fit`` returns normally; a stop without a
checkpoint (``ckptd stop --no-checkpoint``) saves nothing.

Retention: ckptd's rules (``keep_last``, ``keep_best``) keep these checkpoints;
``ModelCheckpoint``'s ``save_top_k`` governs only its own files.

Ranks (``strategy="ddp"`` under ``torchrun`` and ckptd): every rank takes the request at
the one step the group agreed on and calls ``save_checkpoint`` (collective: rank 0
writes) into the group's shared directory, committed once after every rank's block
exited. Standalone (no daemon), Lightning's own SIGTERM handler ends ``fit`` with its
``SIGTERMException`` (exit status 0) after the step in which the final save was made;
under ckptd the stop comes over the job channel.
"""

from __future__ import annotations

from typing import Any

from ._client import Client
from ._frameworks import checkpoint_file, missing_framework, numeric_metrics
from ._frameworks import shared_client as _shared_client

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.exceptions import SIGTERMException
except ModuleNotFoundError as _error:
    _missing = missing_framework(_error, "lightning", "lightning")
    if _missing is None:
        raise
    raise _missing from None

__all__ = ["CHECKPOINT_FILE", "CkptdCallback", "resume_path"]

CHECKPOINT_FILE = "model.ckpt"


class CkptdCallback(pl.Callback):
    """Turns ckptd requests into Lightning's own checkpoints, committed as ckptd checkpoints.

    Per batch it reads two flags of the client (no syscall, no lock). A save that
    fails to commit raises in ``fit``; earlier checkpoints stay valid.
    """

    def __init__(self, client: Client | None = None) -> None:
        # Connect now, not at fit start: ckptd knows the job is alive from here on.
        self.client = _shared_client(client)
        resumed = self.client.restore()
        self._saved_step = resumed.step if resumed else None

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        ck = self.client
        step = trainer.global_step
        ck.step(step)
        if ck.should_checkpoint():
            self._save(trainer, step)
        if ck.should_stop():  # the final save (if one was wanted) is done: the client saw to it
            trainer.should_stop = True

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Standalone, Lightning's own SIGTERM handler ends fit with this exception at a step
        # boundary, possibly before the client saw the signal: that step is saved here. Under
        # ckptd a SIGTERM only comes when the daemon has given up waiting: nothing is saved.
        if (
            isinstance(exception, SIGTERMException)
            and self.client.standalone
            and trainer.global_step != self._saved_step
        ):
            self._save(trainer, trainer.global_step)

    def _save(self, trainer: pl.Trainer, step: int) -> None:
        metrics = numeric_metrics(trainer.callback_metrics)
        with self.client.checkpoint(step, metrics=metrics) as directory:
            trainer.save_checkpoint(directory / CHECKPOINT_FILE)
        self._saved_step = step


def resume_path(client: Client | None = None) -> str | None:
    """The newest ckptd checkpoint that verifies, as ``Trainer.fit(ckpt_path=...)`` takes it
    (its ``model.ckpt``), or None on a fresh start.

    Under ckptd this is the checkpoint the daemon verified before the launch (a corrupt
    newer one was skipped); standalone, the newest one in the checkpoint directory that
    verifies. A checkpoint not saved by this callback is a one-line ``ValueError``.
    """
    last = _shared_client(client).restore()
    if last is None:
        return None
    return str(checkpoint_file(last.path, CHECKPOINT_FILE, "Lightning"))
