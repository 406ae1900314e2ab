"""ckptd_client.torch: snapshots, background saves and weights-only loading (torch extra)."""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None,
    reason="torch is not installed (pip install -e '.[torch]' to run these)",
)


@pytest.fixture
def torch_module():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about optional numpy at import
        import torch

        import ckptd_client.torch as helpers
    return torch, helpers


@pytest.fixture
def connect(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Any]]:
    """Standalone clients checkpointing under tmp_path, closed after the test."""
    import ckptd_client

    monkeypatch.delenv("CKPTD_ENDPOINT", raising=False)
    monkeypatch.chdir(tmp_path)
    clients: list[Any] = []

    def make() -> Any:
        clients.append(ckptd_client.connect())
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def test_save_async_snapshots_then_loads_weights_only(
    tmp_path: Path, connect, torch_module
) -> None:
    """save_async copies the state first: later in-place changes do not reach the checkpoint."""
    torch, helpers = torch_module
    ck = connect()
    model = torch.nn.Linear(4, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    helpers.save_async(ck, 3, {"model": model.state_dict(), "meta": {"epoch": 1}})
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on while the save is written
    ck.wait()
    loaded = helpers.load(connect())
    assert loaded is not None and loaded["meta"] == {"epoch": 1}
    assert all(torch.equal(loaded["model"][k], before[k]) for k in before)
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "step-00000003").iterdir()) == [
        "ckptd.json",
        "meta.pt",
        "model.pt",
    ]


def test_load_refuses_pickled_objects_by_default(tmp_path: Path, torch_module) -> None:
    """weights_only=True: a checkpoint holding arbitrary objects is not unpickled."""
    torch, helpers = torch_module
    (tmp_path / "evil.pt").write_bytes(b"")
    torch.save({"f": Path("x")}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match=r"[Ww]eights only"):
        helpers.load(tmp_path)


def test_snapshot_memory_is_reused_without_touching_committed_saves(
    tmp_path: Path, connect, torch_module
) -> None:
    """The second save_async reuses the first snapshot's memory; both checkpoints stay right."""
    torch, helpers = torch_module
    ck = connect()
    weights = torch.zeros(1000)
    helpers.save_async(ck, 1, {"w": weights})
    ck.wait()
    first_buffer = helpers._buffers[ck].in_use[0]
    weights += 1
    helpers.save_async(ck, 2, {"w": weights})
    ck.wait()
    assert helpers._buffers[ck].in_use[0].data_ptr() == first_buffer.data_ptr()
    one = torch.load(tmp_path / "checkpoints" / "step-00000001" / "w.pt", weights_only=True)
    two = torch.load(tmp_path / "checkpoints" / "step-00000002" / "w.pt", weights_only=True)
    assert float(one.sum()) == 0.0 and float(two.sum()) == 1000.0


def test_saves_skip_torch_s_crc32_and_put_the_setting_back(
    tmp_path: Path, connect, torch_module
) -> None:
    """The helpers write without torch's per-record CRC32 (the manifest digests every byte);
    the file loads; torch's setting is what it was after saves in two threads at once."""
    import threading
    import zipfile

    from torch.utils.serialization import config

    torch, helpers = torch_module
    ck = connect()
    weights = {"w": torch.arange(1 << 16, dtype=torch.float32)}
    assert config.save.compute_crc32 is True
    helpers.save(ck, 1, {"model": weights})
    path = tmp_path / "checkpoints" / "step-00000001" / "model.pt"
    with zipfile.ZipFile(path) as archive:
        data = [i for i in archive.infolist() if i.filename.rsplit("/", 2)[-2] == "data"]
        assert data and all(i.CRC == 0 for i in data)
    assert torch.equal(helpers.load(connect())["model"]["w"], weights["w"])

    seen: dict[str, list[bool]] = {}
    started = threading.Barrier(2)

    def write(name: str, rounds: int) -> None:
        started.wait()
        for _ in range(rounds):
            with helpers._without_crc32():
                seen.setdefault(name, []).append(config.save.compute_crc32)
                torch.save(weights, tmp_path / f"{name}.pt")
        seen[name].append(config.save.compute_crc32)  # after its saves: as it was

    threads = [threading.Thread(target=write, args=(n, r)) for n, r in (("a", 2), ("b", 30))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"a": [False, False, True], "b": [False] * 30 + [True]}
    assert config.save.compute_crc32 is True
