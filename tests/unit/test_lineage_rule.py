"""The one-lineage rule of a remote prefix, as a table: which lineage wins, what is pruned."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptd.storage.remote.lineage import reconcile, superseded
from ckptd.storage.remote.store import RemoteEntry
from ckptd_client.store import Checkpoint


def _entry(step: int, lineage: str | None, valid: bool = True) -> RemoteEntry:
    return RemoteEntry(Checkpoint(Path(f"step-{step:08d}"), step, valid=valid), lineage)


@pytest.mark.parametrize(
    ("listed", "progress", "ahead", "newest_ours", "others"),
    [
        ([], -1, None, None, []),  # an empty prefix: nothing to compare
        ([_entry(9409, "B")], 590, 9409, None, [9409]),  # another run is ahead: resume from it
        ([_entry(9409, "A")], 590, 9409, 9409, []),  # even this lineage, further elsewhere
        ([_entry(30, "B")], 590, None, None, [30]),  # the job is ahead: its uploads win
        ([_entry(30, None)], 590, None, 30, []),  # no lineage recorded: anyone's
        ([_entry(30, "A"), _entry(40, "B")], 590, None, 30, [40]),
        ([_entry(700, "B", valid=False), _entry(30, "A")], 590, None, 30, [700]),  # invalid: no
        ([_entry(590, "A")], 590, None, 590, []),  # the job resumed from it: not ahead
    ],
)
def test_reconcile(
    listed: list[RemoteEntry],
    progress: int,
    ahead: int | None,
    newest_ours: int | None,
    others: list[int],
) -> None:
    """Ahead is the newest valid remote step past the job's progress, of any lineage."""
    found = reconcile(listed, "A", progress)
    assert (found.ahead.step if found.ahead else None, found.newest_ours, found.others) == (
        ahead,
        newest_ours,
        others,
    )


def test_an_upload_supersedes_only_older_checkpoints_of_other_lineages() -> None:
    """Other lineages below the uploaded step go; newer ones, this lineage's and unknown stay."""
    listed = [_entry(5, "B"), _entry(6, None), _entry(7, "A"), _entry(8, "C"), _entry(20, "B")]
    assert [e.step for e in superseded(listed, "A", 10)] == [5, 8]
