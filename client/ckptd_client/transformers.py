"""Hugging Face ``Trainer`` under ckptd (needs the ``transformers`` extra).

    from ckptd_client.transformers import CkptdCallback, resume_path
    trainer = Trainer(..., callbacks=[CkptdCallback()])
    trainer.train(resume_from_checkpoint=resume_path())     # None on a fresh start

A ckptd request sets ``control.should_save`` at the next step end, so the Trainer
saves with its own ``_save_checkpoint`` (model, optimizer, scheduler, RNG, trainer
state) into ``output_dir/checkpoint-N``; that directory's files are then moved
(renamed, not copied) into a ckptd checkpoint ``step-N``, N = ``state.global_step``,
committed with the last logged metrics (``loss``, ``eval_loss``, ...). A stop
(SIGTERM, STOP, preemption) is that save followed by ``control.should_training_stop``;
a stop without a checkpoint (``ckptd stop --no-checkpoint``) saves nothing.

Ranks (``torchrun`` or ``accelerate launch`` under ckptd, DDP or FSDP): every rank
takes the request at the one step the group agreed on, and the Trainer's save, which
is collective (rank 0 the model and optimizer, each rank its RNG state, FSDP each its
shard), writes straight into the group's shared directory, in a ``checkpoint-N``
folder within it: ``output_dir`` points there for that one save, so no rank moves
another's files. It is committed once, after every rank has written; ranks wait for
that through ckptd, never in a collective of their own.

Retention: the saves made for ckptd leave ``output_dir`` and are kept by ckptd's
rules (``keep_last``, ``keep_best``); ``save_total_limit`` governs only the Trainer's
own scheduled saves, which stay in ``output_dir``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._client import Client
from ._frameworks import checkpoint_file, missing_framework, move_into, numeric_metrics
from ._frameworks import shared_client as _shared_client

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ModuleNotFoundError as _error:
    _missing = missing_framework(_error, "transformers", "transformers")
    if _missing is None:
        raise
    raise _missing from None

__all__ = ["CkptdCallback", "resume_path"]

# The Trainer names its saves f"{PREFIX_CHECKPOINT_DIR}-{global_step}" and writes this state file.
_PREFIX = "checkpoint"
_STATE_FILE = "trainer_state.json"


def _save_name(step: int) -> str:
    return f"{_PREFIX}-{step}"


class CkptdCallback(TrainerCallback):
    """Turns ckptd requests into the Trainer's own saves, committed as ckptd checkpoints.

    Per step it reads two flags of the client (no syscall, no lock). A save that
    fails to commit raises in the training loop; earlier checkpoints stay valid.
    """

    def __init__(self, client: Client | None = None) -> None:
        # Connect now, not at train start: ckptd knows the job is alive from here on.
        self.client = _shared_client(client)
        self.metrics: dict[str, float] = {}
        self._saving = False
        self._output_dir: str | None = None  # the user's, while a group save writes elsewhere

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        ck = self.client
        ck.step(state.global_step)
        if ck.should_checkpoint():
            control.should_save = True
            self._saving = True
            if ck.in_group:  # every rank writes its part of this save into the shared directory
                self._output_dir = args.output_dir
                args.output_dir = str(ck.shared_directory(state.global_step))
        elif ck.should_stop():  # the final save (if one was wanted) is done: the client saw to it
            control.should_training_stop = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs:
            self.metrics.update(numeric_metrics(logs))

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not self._saving:
            return  # one of the Trainer's scheduled saves: it stays the Trainer's
        self._saving = False
        saved = Path(args.output_dir) / _save_name(state.global_step)
        in_place = self._output_dir is not None  # written into the shared directory already
        if self._output_dir is not None:
            args.output_dir, self._output_dir = self._output_dir, None
        with self.client.checkpoint(state.global_step, metrics=self.metrics) as directory:
            if not in_place:
                move_into(saved, directory)
        if self.client.should_stop():
            control.should_training_stop = True


def resume_path(client: Client | None = None) -> str | None:
    """The newest ckptd checkpoint that verifies, as ``Trainer.train(resume_from_checkpoint=...)``
    takes it, or None on a fresh start.

    Under ckptd this is the checkpoint the daemon verified before the launch (a corrupt
    newer one was skipped), the same on every rank; standalone, the newest one in the
    checkpoint directory that verifies. A save of several ranks holds the Trainer's
    ``checkpoint-N`` folder, which is returned. A checkpoint not saved by this callback
    is a one-line ``ValueError``.
    """
    last = _shared_client(client).restore()
    if last is None:
        return None
    ranks_save = last.path / _save_name(last.step)
    if (ranks_save / _STATE_FILE).is_file():
        return str(ranks_save)
    checkpoint_file(last.path, _STATE_FILE, "Hugging Face")
    return str(last.path)
