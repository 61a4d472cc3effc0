"""Checkpoints: round trip, rotation, and atomicity (a write that dies midway leaves the previous
checkpoint as the latest and nothing half-written that a reader could pick up)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from kubemaas_trainer import distributed
from kubemaas_trainer.checkpoint import CheckpointError, CheckpointStore, checkpoint_path, list_checkpoints


def model_state(seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": seed}


def assert_same_state(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same_state(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_state(x, y)
    else:
        assert a == b


def test_the_latest_checkpoint_comes_back_with_its_step_and_state(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt")
    assert store.load_latest() is None
    store.save(10, model_state(1))
    store.save(20, model_state(2))
    latest = store.load_latest()
    assert latest is not None
    assert latest.step == 20
    assert latest.path == checkpoint_path(tmp_path / "ckpt", 20)
    assert_same_state(latest.state, model_state(2))


def test_a_missing_directory_means_a_fresh_start(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path / "never-created").load_latest() is None


def test_resume_restores_a_model_and_optimizer_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    data = torch.randn(16, 4)

    def step(m: torch.nn.Module, o: torch.optim.Optimizer) -> None:
        o.zero_grad()
        m(data).pow(2).mean().backward()
        o.step()

    step(model, optimizer)
    store = CheckpointStore(tmp_path)
    store.save(1, {"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    step(model, optimizer)  # the uninterrupted run goes on

    resumed = torch.nn.Linear(4, 1)
    resumed_optimizer = torch.optim.Adam(resumed.parameters(), lr=0.1)
    latest = store.load_latest()
    assert latest is not None
    resumed.load_state_dict(latest.state["model"])
    resumed_optimizer.load_state_dict(latest.state["optimizer"])
    step(resumed, resumed_optimizer)
    assert torch.equal(resumed.weight, model.weight) and torch.equal(resumed.bias, model.bias)


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for step in (1, 2, 3, 4, 5):
        store.save(step, {"x": torch.tensor(step)})
    assert store.steps() == [4, 5]
    everything = CheckpointStore(tmp_path / "all", keep=None)
    for step in range(4):
        everything.save(step, {})
    assert everything.steps() == [0, 1, 2, 3]


def test_steps_order_by_number_not_by_name(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=None)
    for step in (9, 10, 100, 99):
        store.save(step, {"step": step})
    assert store.steps() == [9, 10, 99, 100]
    latest = store.load_latest()
    assert latest is not None and latest.state == {"step": 100}


def test_foreign_files_are_never_taken_for_checkpoints(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(3, {})
    for name in ("step-7.pt", "step-0000000008.pt.bak", "notes.txt", ".step-0000000009.pt.tmp-123"):
        (tmp_path / name).write_bytes(b"junk")
    (tmp_path / "step-0000000011.pt").mkdir()
    assert store.steps() == [3]
    assert [step for step, _ in list_checkpoints(tmp_path)] == [3]


def test_a_write_that_dies_midway_leaves_the_previous_checkpoint_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CheckpointStore(tmp_path)
    store.save(1, {"w": torch.ones(3)})
    real_save = torch.save

    def dying_save(obj: object, stream: Any, *args: Any, **kwargs: Any) -> None:
        stream.write(b"PK\x03\x04 half a zip archive")  # some bytes reach the disk, then the crash
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="No space left"):
        store.save(2, {"w": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["step-0000000001.pt"]
    latest = store.load_latest()
    assert latest is not None and latest.step == 1 and torch.equal(latest.state["w"], torch.ones(3))


def test_a_temporary_file_left_by_a_killed_writer_is_ignored_then_cleaned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(5, {"ok": True})
    stale = tmp_path / ".step-0000000006.pt.tmp-4242"
    stale.write_bytes(b"PK truncated")
    latest = store.load_latest()
    assert latest is not None and latest.step == 5
    store.save(6, {"ok": True})
    assert not stale.exists()
    assert store.steps() == [5, 6]


def test_the_file_on_disk_is_complete_before_it_is_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the moment of the rename, the temporary file already holds the whole archive and has
    been fsynced."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def recording_replace(src: Any, dst: Any) -> None:
        events.append("replace")
        assert torch.load(src, weights_only=True)["step"] == 8  # complete and loadable under the temp name
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    CheckpointStore(tmp_path).save(8, {"w": torch.randn(100)})
    assert events == ["fsync", "replace", "fsync"]  # file, rename, then the folder


def test_arbitrary_pickled_objects_are_not_loaded_by_default(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(1, {"thing": Path("/etc")})  # any class the weights-only loader does not know
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        store.load_latest()
    latest = store.load_latest(weights_only=False)  # an explicit opt-in for trusted files
    assert latest is not None and latest.state["thing"] == Path("/etc")


def test_a_file_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    torch.save({"weights": torch.ones(1)}, checkpoint_path(tmp_path, 4))
    with pytest.raises(CheckpointError, match="not a kubemaas checkpoint"):
        CheckpointStore(tmp_path).load_latest()


def test_the_directory_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CheckpointError, match="KUBEMAAS_CHECKPOINT_DIR"):
        CheckpointStore()
    monkeypatch.setenv("KUBEMAAS_CHECKPOINT_DIR", str(tmp_path / "from-env"))
    CheckpointStore().save(1, {})
    assert (tmp_path / "from-env" / "step-0000000001.pt").is_file()


@pytest.mark.parametrize("step", [-1, 1.5, True, "3"])
def test_steps_must_be_non_negative_integers(tmp_path: Path, step: Any) -> None:
    with pytest.raises(ValueError, match="step must be a non-negative integer"):
        CheckpointStore(tmp_path).save(step, {})


def test_keep_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep must be at least 1"):
        CheckpointStore(tmp_path, keep=0)


def test_only_rank_0_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    CheckpointStore(tmp_path).save(1, {})
    assert not tmp_path.joinpath("step-0000000001.pt").exists()


def test_save_and_load_inside_a_process_group(
    tmp_path: Path, process_group: distributed.DistributedContext
) -> None:
    store = CheckpointStore(tmp_path)
    store.save(2, {"w": torch.arange(3)})
    latest = store.load_latest(map_location=process_group.device)
    assert latest is not None and latest.step == 2 and torch.equal(latest.state["w"], torch.arange(3))
