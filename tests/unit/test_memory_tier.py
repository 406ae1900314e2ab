"""The memory tier's pieces: its keys, its RAM directory, persistence to disk, pruning, room."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

import ckptd_client
from ckptd.config import ConfigError, load
from ckptd.storage import memory
from ckptd.storage.branches import set_aside_newer
from ckptd.storage.persist import PersistError, persist, persist_newest
from ckptd_client import _mapped, _spare, manifest, protocol
from ckptd_client import ram as ram_module
from ckptd_client.store import inspect, scan

from conftest import wait_for
from stand_in_daemon import receive, stand_in_daemon

SHM = Path("/dev/shm")
needs_shm = pytest.mark.skipif(
    memory.filesystem_of(SHM) not in memory.RAM_FILESYSTEMS, reason="no tmpfs at /dev/shm"
)


def _commit(directory: Path, step: int, payload: bytes = b"weights") -> Path:
    temp = manifest.new_temp_dir(directory, step)
    (temp / "model.pt").write_bytes(payload + str(step).encode())
    (temp / "sub").mkdir()
    (temp / "sub" / "opt.pt").write_bytes(b"optimizer" * 100)
    path, _ = manifest.commit(temp, step, {"loss": 1.0})
    return path


# -- configuration ---------------------------------------------------------------------


def test_memory_keys_parse_from_file_and_flags(tmp_path: Path) -> None:
    """memory_every takes a duration or "auto", memory_dir a path, memory_keep a count >= 1."""
    path = tmp_path / "c.toml"
    path.write_text('[job]\ncommand = ["x"]\nmemory_every = "5s"\nmemory_dir = "ram"\n')
    config = load(path, {"memory_keep": 3}, base=tmp_path)
    assert (config.memory_every, config.memory_dir) == (5.0, tmp_path / "ram")
    assert config.memory_keep == 3
    auto = load(None, {"command": ["x"], "memory_every": "auto"}, base=tmp_path)
    assert auto.memory_every == "auto" and auto.memory_dir is None and auto.memory_keep == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('memory_every = "10ms"', "[job].memory_every: must be at least 1s"),
        ("memory_keep = 0", "[job].memory_keep: expected a positive integer"),
        ('memory_dir = "/x"', "memory_dir: needs memory_every"),
    ],
)
def test_bad_memory_keys_name_the_key(tmp_path: Path, body: str, message: str) -> None:
    """A bad memory-tier value is a one-line error naming its key."""
    path = tmp_path / "c.toml"
    path.write_text(f'[job]\ncommand = ["x"]\n{body}\n')
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(path, {}, base=tmp_path)


# -- the RAM directory -----------------------------------------------------------------


@needs_shm
def test_default_place_is_private_on_tmpfs_and_the_same_for_the_next_run(tmp_path: Path) -> None:
    """Without memory_dir, a 0700 per-job directory on /dev/shm, named the same by the next run."""
    first = memory.find_place("job", tmp_path / "ck", None)
    try:
        again = memory.find_place("job", tmp_path / "ck", None)
        other = memory.find_place("job", tmp_path / "elsewhere", None)
        assert first.in_ram and not first.explicit and first.path == again.path
        assert first.path.is_relative_to(SHM) and other.path != first.path
        assert os.stat(first.path).st_mode & 0o777 == 0o700
        memory.clear(other)
    finally:
        memory.clear(first)
    assert not first.path.exists()


@needs_shm
def test_clear_takes_the_per_user_directory_with_the_last_job() -> None:
    """The per-user directory goes with the last job's clear(), not while another job uses it."""
    root = SHM / f"ckptd-test-{os.getpid()}-{id(object())}"
    root.mkdir(mode=0o700)
    try:
        first = memory.find_place("one", root / "ck", None, roots=[root])
        second = memory.find_place("two", root / "ck", None, roots=[root])
        assert first.path.parent == second.path.parent
        memory.clear(first)
        assert not first.path.exists() and second.path.is_dir()
        memory.clear(second)
        assert list(root.iterdir()) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_no_ram_filesystem_is_a_start_error_naming_memory_dir(tmp_path: Path) -> None:
    """ckptd never picks a disk-backed directory itself: without tmpfs, memory_dir is asked for."""
    if memory.filesystem_of(tmp_path) in memory.RAM_FILESYSTEMS:
        pytest.skip("the temporary directory is on tmpfs itself")
    with pytest.raises(memory.MemoryPlaceError, match="memory_dir: no RAM-backed filesystem"):
        memory.find_place("job", tmp_path / "ck", None, roots=[tmp_path])


def test_an_explicit_disk_directory_is_used_as_told_and_said_to_be_on_disk(tmp_path: Path) -> None:
    """A memory_dir the user chose is used whatever it is on; the place says it is not RAM."""
    place = memory.find_place("job", tmp_path / "ck", tmp_path / "a" / "ram")
    assert place.explicit and place.path.is_dir()
    assert place.in_ram is (memory.filesystem_of(tmp_path) in memory.RAM_FILESYSTEMS)


def test_a_linked_or_shared_memory_dir_is_refused(tmp_path: Path) -> None:
    """A memory_dir that is a symlink, or writable by others, is refused, never followed."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(memory.MemoryPlaceError, match="not a directory"):
        memory.find_place("job", tmp_path, tmp_path / "link")
    (tmp_path / "open").mkdir(mode=0o777)
    os.chmod(tmp_path / "open", 0o777)
    with pytest.raises(memory.MemoryPlaceError, match="writable by others"):
        memory.find_place("job", tmp_path, tmp_path / "open")


# -- persistence -----------------------------------------------------------------------


def test_persist_copies_a_memory_checkpoint_verified_and_atomically(tmp_path: Path) -> None:
    """The copy verifies in full, has the same bytes and manifest, and no .tmp- is left."""
    source = _commit(tmp_path / "ram", 12)
    done = persist(source, tmp_path / "disk", mode=0o700)
    assert done.copied and done.step == 12 and done.path == tmp_path / "disk" / "step-00000012"
    assert inspect(done.path, full=True).valid
    for name in ("model.pt", "sub/opt.pt", "ckptd.json"):
        assert (done.path / name).read_bytes() == (source / name).read_bytes()
    assert os.stat(done.path).st_mode & 0o777 == 0o700
    assert os.stat(done.path / "model.pt").st_mode & 0o777 == 0o600
    assert [p.name for p in (tmp_path / "disk").iterdir()] == ["step-00000012"]
    again = persist(source, tmp_path / "disk")
    assert not again.copied and again.path == done.path


def test_a_corrupt_memory_checkpoint_is_not_persisted(tmp_path: Path) -> None:
    """A flipped byte in RAM: PersistError(corrupt), and nothing at all on disk."""
    source = _commit(tmp_path / "ram", 3)
    data = bytearray((source / "model.pt").read_bytes())
    data[0] ^= 0xFF
    (source / "model.pt").write_bytes(bytes(data))
    with pytest.raises(PersistError, match="mismatch") as raised:
        persist(source, tmp_path / "disk")
    assert raised.value.corrupt
    assert list((tmp_path / "disk").iterdir()) == []


def test_persist_never_follows_a_symlink_in_the_source(tmp_path: Path) -> None:
    """A file of the memory checkpoint swapped for a link is refused, the target never read."""
    source = _commit(tmp_path / "ram", 4)
    secret = tmp_path / "secret"
    secret.write_bytes(b"not yours")
    (source / "model.pt").unlink()
    (source / "model.pt").symlink_to(secret)
    with pytest.raises(PersistError) as raised:
        persist(source, tmp_path / "disk")
    assert raised.value.corrupt
    assert not any((tmp_path / "disk").rglob("*")) if (tmp_path / "disk").exists() else True


def test_persist_newest_skips_a_corrupt_copy_and_stops_at_the_disk(tmp_path: Path) -> None:
    """Newest RAM copy newer than the disk's: a corrupt one is skipped and removed from RAM."""
    ram, disk = tmp_path / "ram", tmp_path / "disk"
    _commit(disk, 5)
    _commit(ram, 4)
    _commit(ram, 6)
    bad = _commit(ram, 7)
    (bad / "model.pt").write_bytes(b"torn")
    pickup = persist_newest(ram, disk)
    assert pickup.persisted is not None and pickup.persisted.step == 6
    assert [(s.step, s.path.exists()) for s in pickup.skipped] == [(7, False)]
    assert [c.step for c in scan(disk) if c.valid] == [5, 6]
    assert persist_newest(ram, disk).persisted is None  # nothing newer than the disk now


def test_a_node_persists_every_ram_step_newer_than_its_disk_when_asked(tmp_path: Path) -> None:
    """``every_newer`` (a node of several): the older RAM steps newer than the disk go too,
    so that the ranks can resume from a step another node has when it lacks the newest."""
    ram, disk = tmp_path / "ram", tmp_path / "disk"
    _commit(disk, 5)
    _commit(ram, 4)
    _commit(ram, 6)
    _commit(ram, 7)
    pickup = persist_newest(ram, disk, every_newer=True)
    assert pickup.persisted is not None and pickup.persisted.step == 7
    assert [done.step for done in pickup.older] == [6]
    assert [c.step for c in scan(disk) if c.valid] == [5, 6, 7]


def test_another_checkpoint_of_the_same_step_on_disk_is_replaced(tmp_path: Path) -> None:
    """A step the nodes passed over, saved again since: the disk's older save of that step
    (another history) gives way to the RAM one; the same checkpoint is left alone."""
    ram, disk = tmp_path / "ram", tmp_path / "disk"
    _commit(disk, 8, payload=b"an earlier history")
    source = _commit(ram, 8, payload=b"this history")
    done = persist(source, disk)
    assert done.copied
    assert (disk / "step-00000008" / "ckptd.json").read_bytes() == (
        source / "ckptd.json"
    ).read_bytes()
    assert inspect(done.path, full=True).valid
    assert [p.name for p in disk.iterdir()] == ["step-00000008"]
    assert not persist(source, disk).copied


def test_clear_removes_the_directory_id_and_the_spare_pool() -> None:
    """The ranks of several nodes name each RAM directory (``.ckptd-directory-id``), prune
    leaves spares: a clear takes both, so the job's directory goes."""
    root = SHM / f"ckptd-test-{os.getpid()}-{id(object())}"
    root.mkdir(mode=0o700)
    try:
        place = memory.find_place("nodes", root / "ck", None, roots=[root])
        _commit(place.path, 3)
        (place.path / ".ckptd-directory-id").write_text("0123")
        (place.path / _spare.SPARE_DIR).mkdir()
        (place.path / _spare.SPARE_DIR / "model.pt").write_bytes(b"spare pages")
        memory.clear(place)
        assert list(root.iterdir()) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_steps_passed_over_go_aside_but_not_this_run_s(tmp_path: Path) -> None:
    """The ranks resumed from step 5: disk steps above it committed before this run's launch
    go to a branch, RAM's are removed; a step 7 committed since the launch stays."""
    ram, disk = tmp_path / "ram", tmp_path / "disk"
    for step in (5, 6, 8):
        _commit(disk, step)
        _commit(ram, step)
    launched = time.time() + 0.01
    wait_for(lambda: time.time() > launched, "the clock past the launch")
    _commit(disk, 7)
    _commit(ram, 7)
    aside = set_aside_newer(disk, 5, before=launched)
    assert sorted(p.name for p in aside.moved) == ["step-00000006", "step-00000008"]
    assert [c.step for c in scan(disk)] == [5, 7]
    assert sorted(p.name for p in memory.drop_newer(ram, 5, launched)) == [
        "step-00000006",
        "step-00000008",
    ]
    assert [c.step for c in scan(ram)] == [5, 7]


def test_a_failing_destination_keeps_the_ram_copy(tmp_path: Path) -> None:
    """When the disk cannot take it, the attempt reports why and the RAM copy stays."""
    ram = tmp_path / "ram"
    source = _commit(ram, 9)
    (tmp_path / "disk").write_text("a file where the checkpoint directory should be")
    pickup = persist_newest(ram, tmp_path / "disk")
    assert pickup.persisted is None and pickup.error and source.is_dir()


def test_a_copy_past_its_deadline_is_given_up_and_the_ram_copy_kept(tmp_path: Path) -> None:
    """A stop's deadline passes during the copy: nothing is left on disk, RAM keeps the
    checkpoint (not corrupt: a later run persists it), and without a deadline it persists."""
    ram, disk = tmp_path / "ram", tmp_path / "disk"
    source = _commit(ram, 9)
    with pytest.raises(PersistError, match="deadline") as raised:
        persist(source, disk, deadline=time.monotonic() - 1)
    assert not raised.value.corrupt
    assert scan(disk) == [] and [p.name for p in disk.iterdir()] == []
    pickup = persist_newest(ram, disk, deadline=time.monotonic() - 1)
    assert pickup.persisted is None and "deadline" in str(pickup.error) and source.is_dir()
    assert persist(source, disk, deadline=time.monotonic() + 60).step == 9
    assert inspect(disk / "step-00000009", full=True).valid


# -- what RAM keeps --------------------------------------------------------------------


def test_prune_keeps_the_newest_memory_keep_and_what_is_protected(tmp_path: Path) -> None:
    """memory_keep bounds the valid checkpoints in RAM; invalid ones and protected ones aside."""
    ram = tmp_path / "ram"
    paths = [_commit(ram, step) for step in (1, 2, 3, 4)]
    (ram / "step-00000009").mkdir()  # no manifest: not a checkpoint
    removed = memory.prune(ram, 2, protect=[paths[0]])
    assert sorted(p.name for p in removed) == ["step-00000002", "step-00000009"]
    assert [c.step for c in scan(ram)] == [1, 3, 4]


def test_a_pruned_checkpoint_s_pages_are_reused_by_the_next_ram_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prune keeps the files of the checkpoint it removes as spares; ``ckptd_client.create``
    of a RAM save takes the spare of the same name (the same inode: no fresh pages), writes
    over it and cuts it to its size; the commit verifies; a name without a spare is new."""
    ram = tmp_path / "ram"
    monkeypatch.setenv(protocol.ENV_MEMORY_DIR, str(ram))
    old = _commit(ram, 1, payload=b"x" * 5000)
    _commit(ram, 2)
    inode = os.stat(old / "model.pt").st_ino
    assert memory.prune(ram, 1) == [old]
    pool = ram / _spare.SPARE_DIR
    assert sorted(p.name for p in pool.iterdir()) == ["model.pt", "sub%2Fopt.pt"]
    assert _spare.spare_bytes(ram) == 5001 + 900

    temp = manifest.new_temp_dir(ram, 3)
    with ckptd_client.create(temp / "model.pt") as handle:
        handle.write(b"short")
    (temp / "sub").mkdir()
    with ckptd_client.create(temp / "sub" / "opt.pt") as handle:
        handle.write(b"o" * 2000)
    with ckptd_client.create(temp / "extra.pt") as handle:
        handle.write(b"new")
    assert os.stat(temp / "model.pt").st_ino == inode
    assert (temp / "model.pt").read_bytes() == b"short"
    assert (temp / "sub" / "opt.pt").read_bytes() == b"o" * 2000
    path, _ = manifest.commit(temp, 3)
    assert inspect(path, full=True).valid
    assert list(pool.iterdir()) == []


def _ram_save(ram: Path, step: int, parts: dict[str, bytes], pieces: int = 1) -> Path:
    """A RAM save through ckptd_client.create, each file written in ``pieces`` writes."""
    temp = manifest.new_temp_dir(ram, step)
    for name, data in parts.items():
        with ckptd_client.create(temp / name) as handle:
            size = -(-len(data) // pieces)
            for start in range(0, len(data), size):
                assert handle.write(data[start : start + size]) == len(data[start : start + size])
    path, _ = manifest.commit(temp, step)
    return path


@pytest.fixture
def fresh_mappings() -> Iterator[None]:
    _mapped.forget_all()
    yield
    _mapped.forget_all()


@pytest.fixture
def shm_ram(monkeypatch: pytest.MonkeyPatch, fresh_mappings: None) -> Iterator[Path]:
    """A memory directory on /dev/shm, told to the client as ckptd tells its job; removed."""
    if memory.filesystem_of(SHM) not in memory.RAM_FILESYSTEMS:
        pytest.skip("no tmpfs at /dev/shm")
    ram = SHM / f"ckptd-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(protocol.ENV_MEMORY_DIR, str(ram))
    yield ram
    shutil.rmtree(ram, ignore_errors=True)


def test_a_spare_written_again_goes_through_the_mapping_kept_for_its_inode(shm_ram: Path) -> None:
    """The second time an inode comes back as a spare, its save is copied into the mapping
    the first time kept (no new one); writes that outgrow it go on with write(), a shorter
    save cuts the file; every commit verifies with the bytes written, and a later mapping
    never reaches past the file."""
    ram = shm_ram
    sizes = [3 << 20, 3 << 20, (3 << 20) + 12345, 2 << 20, 3 << 20]
    for step, size in enumerate(sizes, start=1):
        data = os.urandom(size)
        path = _ram_save(ram, step, {"model.pt": data, "small.pt": b"s" * 100}, pieces=3)
        assert (path / "model.pt").read_bytes() == data
        assert inspect(path, full=True).valid
        inode = os.stat(path / "model.pt").st_ino
        if step == 3:  # step 1's file came back as a spare: mapped, and the mapping kept
            assert _mapped.kept_count() == 1
            first = next(iter(_mapped._kept.items()))
            assert first[0][1] == inode
        if step == 5:  # the same inode again (step 3's): the same mapping, none new
            assert inode == first[0][1] and _mapped._kept[first[0]] is first[1]
        memory.prune(ram, 1)
    # Two inodes alternate; step 4 cut the other one shorter than its mapping, dropped then.
    assert _mapped.kept_count() == 1
    for kept in _mapped._kept.values():
        assert len(kept.mapping) <= os.fstat(kept.fd).st_size


def test_no_mapping_for_a_file_with_holes_and_none_kept_for_an_unlinked_one(shm_ram: Path) -> None:
    """A spare with holes is written with write() (a write through a mapping would allocate,
    and a full tmpfs answers SIGBUS); the mapping of a spare later deleted (a pool cleared)
    is dropped, so it pins no RAM."""
    ram = shm_ram
    pool = ram / _spare.SPARE_DIR
    pool.mkdir(parents=True)
    with open(pool / "model.pt", "wb") as handle:
        handle.truncate(4 << 20)  # all hole
    data = os.urandom(4 << 20)
    path = _ram_save(ram, 1, {"model.pt": data})
    assert _mapped.kept_count() == 0 and (path / "model.pt").read_bytes() == data
    _ram_save(ram, 2, {"model.pt": data})
    memory.prune(ram, 1)  # step 1's file is whole now: the next save maps it
    _ram_save(ram, 3, {"model.pt": data})
    assert _mapped.kept_count() == 1
    shutil.rmtree(ram)
    _mapped.sweep(0.0)
    assert _mapped.kept_count() == 0


def test_writes_that_outgrow_the_mapping_each_return_their_length(shm_ram: Path) -> None:
    """A write-all loop that trusts write()'s count gets every byte once, whether the bytes
    went into the mapping, across its end or past it (the file grows)."""
    ram = shm_ram
    _ram_save(ram, 1, {"model.pt": os.urandom(2 << 20)})
    _ram_save(ram, 2, {"model.pt": os.urandom(2 << 20)})
    memory.prune(ram, 1)  # step 1's 2 MiB file is a spare: mapped when taken
    data = os.urandom((4 << 20) + 777)
    temp = manifest.new_temp_dir(ram, 3)
    with ckptd_client.create(temp / "model.pt") as handle:
        view, done = memoryview(data), 0
        while done < len(data):
            count = handle.write(view[done : done + (300 << 10)])
            assert count == len(view[done : done + (300 << 10)])
            done += count
    assert _mapped.kept_count() == 1
    path, _ = manifest.commit(temp, 3)
    assert (path / "model.pt").read_bytes() == data
    assert inspect(path, full=True).valid


def test_a_forked_child_drops_its_copies_of_the_mappings(shm_ram: Path) -> None:
    """A data-loader worker forked from the trainer keeps no mapping (nor its descriptor)
    of the trainer's RAM files; the trainer keeps its own."""
    ram = shm_ram
    for step in (1, 2, 3):
        _ram_save(ram, step, {"model.pt": os.urandom(2 << 20)})
        memory.prune(ram, 1)
    assert _mapped.kept_count() == 1
    fd = next(iter(_mapped._kept.values())).fd
    child = os.fork()
    if child == 0:
        try:
            os.fstat(fd)
            os._exit(3)  # the descriptor is still open in the child
        except OSError:
            os._exit(_mapped.kept_count())
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _mapped.kept_count() == 1 and os.fstat(fd).st_nlink == 1


def test_mappings_dropped_during_a_save_leave_its_writer_alone(shm_ram: Path) -> None:
    """A sweep or a client's close (another thread) while a writer holds its mapping keeps
    that mapping until the writer is done; the save is whole, and the next one of that file
    maps it again."""
    ram = shm_ram
    for step in (1, 2):
        _ram_save(ram, step, {"model.pt": os.urandom(2 << 20)})
        memory.prune(ram, 1)
    data = os.urandom(2 << 20)
    temp = manifest.new_temp_dir(ram, 3)
    with ckptd_client.create(temp / "model.pt") as handle:
        handle.write(data[: 1 << 20])
        assert _mapped.kept_count() == 1
        _mapped.forget_all()  # as Client.close on another thread
        _mapped.sweep(0.0)
        assert _mapped.kept_count() == 1  # leased: not unmapped under the writer
        handle.write(data[1 << 20 :])
    path, _ = manifest.commit(temp, 3)
    assert (path / "model.pt").read_bytes() == data and inspect(path, full=True).valid
    _mapped.forget_all()
    assert _mapped.kept_count() == 0  # given back: now it goes
    memory.prune(ram, 1)
    for step in (4, 5):
        _ram_save(ram, step, {"model.pt": data})
        memory.prune(ram, 1)
    assert _mapped.kept_count() == 2


def test_a_spare_on_a_disk_filesystem_is_written_without_a_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_mappings: None
) -> None:
    """A memory_dir on a disk filesystem (as told): no mapping, whose write into a full disk
    would be SIGBUS instead of an error."""
    if memory.filesystem_of(tmp_path) in memory.RAM_FILESYSTEMS:
        pytest.skip("the test's directory is on a RAM filesystem here")
    ram = tmp_path / "ram"
    monkeypatch.setenv(protocol.ENV_MEMORY_DIR, str(ram))
    for step in (1, 2, 3):
        data = os.urandom(2 << 20)
        path = _ram_save(ram, step, {"model.pt": data})
        memory.prune(ram, 1)
    assert _mapped.kept_count() == 0
    assert (path / "model.pt").read_bytes() == data


def test_a_spare_that_is_a_link_is_never_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link planted in the spare pool is moved, found to be a link, removed; the save makes
    a fresh file and the link's target is untouched."""
    ram = tmp_path / "ram"
    monkeypatch.setenv(protocol.ENV_MEMORY_DIR, str(ram))
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (ram / _spare.SPARE_DIR).mkdir(parents=True)
    (ram / _spare.SPARE_DIR / "model.pt").symlink_to(victim)
    temp = manifest.new_temp_dir(ram, 1)
    with ckptd_client.create(temp / "model.pt") as handle:
        handle.write(b"weights")
    assert not (temp / "model.pt").is_symlink()
    assert (temp / "model.pt").read_bytes() == b"weights"
    assert victim.read_bytes() == b"keep me"


def test_a_disk_save_never_takes_a_spare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only files of a RAM save (below CKPTD_MEMORY_DIR's .tmp- directories) take spares."""
    ram, disk = tmp_path / "ram", tmp_path / "disk"
    monkeypatch.setenv(protocol.ENV_MEMORY_DIR, str(ram))
    _commit(ram, 1)
    _commit(ram, 2)
    memory.prune(ram, 1)
    temp = manifest.new_temp_dir(disk, 5)
    with ckptd_client.create(temp / "model.pt") as handle:
        handle.write(b"on disk")
    assert (ram / _spare.SPARE_DIR / "model.pt").exists()


def test_room_for_counts_free_space_and_mem_available(tmp_path: Path) -> None:
    """A save fits only with its size plus headroom free on the filesystem and in MemAvailable."""
    assert ram_module.room_for(tmp_path, 1 << 20, available=lambda: 8 << 30) is None
    short = ram_module.room_for(tmp_path, 1 << 20, available=lambda: 32 << 20)
    assert "MemAvailable" in (short or "")
    assert "free" in (ram_module.room_for(tmp_path, 1 << 62, available=lambda: None) or "")
    assert "No such file" in (ram_module.room_for(tmp_path / "gone", 1) or "")


def test_newest_size_is_the_newest_valid_checkpoint_s_bytes(tmp_path: Path) -> None:
    """The size a ranks' RAM save is checked against: the newest valid checkpoint's."""
    assert ram_module.newest_size(tmp_path) == 0
    _commit(tmp_path, 1)
    newest = _commit(tmp_path, 2)
    (tmp_path / "step-00000003").mkdir()  # no manifest: not counted
    assert ram_module.newest_size(tmp_path) == inspect(newest).bytes > 0


# -- the client ------------------------------------------------------------------------


@pytest.fixture
def daemon_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[zmq.Socket]:
    with stand_in_daemon(tmp_path, monkeypatch) as router:
        yield router


def _memory_request(router: zmq.Socket, identity: bytes, rid: str, where: Path) -> None:
    message = protocol.encode(
        "request", id=rid, reason="memory_every", deadline=None, final=False, tier="memory",
        dir=str(where),
    )  # fmt: skip
    router.send_multipart([identity, message])


def test_a_memory_request_is_committed_in_the_memory_directory(
    daemon_socket: zmq.Socket, tmp_path: Path
) -> None:
    """The script's unchanged checkpoint() block lands in the request's RAM directory."""
    ram = tmp_path / "ram"
    ck = ckptd_client.connect()
    try:
        identity, _ = receive(daemon_socket, "hello")
        ck.step(3)
        _memory_request(daemon_socket, identity, "m1", ram)

        wait_for(ck.should_checkpoint, "the flag")
        with ck.checkpoint(3) as directory:
            (directory / "w").write_bytes(b"w")
        _, started = receive(daemon_socket, "started")
        _, committed = receive(daemon_socket, "committed")
        assert started["tier"] == "memory" and "fallback" not in started
        assert committed["path"] == str(ram / "step-00000003")
        assert inspect(ram / "step-00000003").valid
    finally:
        ck.close()


def test_a_memory_directory_that_cannot_be_written_falls_back_to_disk(
    daemon_socket: zmq.Socket, tmp_path: Path
) -> None:
    """When RAM cannot take the save, it goes to checkpoint_dir and says why: nothing is lost."""
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    ck = ckptd_client.connect()
    try:
        identity, _ = receive(daemon_socket, "hello")
        ck.step(4)
        _memory_request(daemon_socket, identity, "m1", blocked / "ram")

        wait_for(ck.should_checkpoint, "the flag")
        with ck.checkpoint(4) as directory:
            (directory / "w").write_bytes(b"w")
        _, started = receive(daemon_socket, "started")
        _, committed = receive(daemon_socket, "committed")
        assert started["tier"] == "disk" and "NotADirectoryError" in started["fallback"]
        assert Path(committed["path"]).parent == ck.checkpoint_dir
    finally:
        ck.close()


def test_memory_every_auto_follows_the_measured_ram_stall(tmp_path: Path) -> None:
    """memory_every = "auto": 1s until a RAM save is measured, then Young/Daly within
    [1s, every_min]."""
    from ckptd.progress.memory_interval import MemoryInterval

    config = load(None, {"command": ["x"], "memory_every": "auto"}, base=tmp_path)
    interval = MemoryInterval(config)
    assert interval.every == 1.0
    assert interval.saved(0.01, 0.01) is not None
    assert interval.every == pytest.approx((2 * 0.01 * config.mtbf) ** 0.5, rel=0.01)
    interval.saved(30.0, 1.0)
    interval.saved(30.0, 1.0)
    assert interval.every == config.every_min


def test_going_back_drops_the_ram_checkpoints_past_the_point(tmp_path: Path) -> None:
    """drop_newer: RAM copies newer than the step gone back to go, never to be persisted."""
    ram = tmp_path / "ram"
    for step in (3, 5, 8):
        _commit(ram, step)
    gone = memory.drop_newer(ram, 5)
    assert [p.name for p in gone] == ["step-00000008"]
    assert [c.step for c in scan(ram)] == [3, 5]


def test_the_ram_copy_of_a_resume_point_is_used_only_when_it_is_the_same(tmp_path: Path) -> None:
    """ram_copy_of: the RAM checkpoint of the resume point's step, when its manifest is the
    same bytes and it verifies in full; a different or torn copy is not used."""
    ram = _commit(tmp_path / "ram", 6)
    disk = persist(ram, tmp_path / "disk").path
    assert memory.ram_copy_of(inspect(disk), tmp_path / "ram").path == ram
    other = _commit(tmp_path / "other", 6, payload=b"another history")
    assert memory.ram_copy_of(inspect(other), tmp_path / "ram") is None
    (ram / "model.pt").write_bytes(b"torn!!!" + b"6")  # same size, other bytes
    assert memory.ram_copy_of(inspect(disk), tmp_path / "ram") is None
