"""A full disk, caused for real (a small tmpfs mounted for the test): the run directory's atomic
JSON writer and the ``.pt2`` program's save fail with a clean error and leave no temporary file,
never a native abort."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pruner.runs.rundir import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs, filled to the last byte (skipped where mounting is not allowed)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_write_json_atomic_leaves_no_tmp_on_a_full_disk(full_disk):
    with pytest.raises(OSError) as info:
        write_json_atomic(full_disk / "notes.json", {"note": "x" * 100_000})
    assert info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_pt2_save_on_a_full_disk_is_a_one_line_error_not_an_abort(full_disk):
    code = ("import sys, torch; from pruner.errors import PrunerError; from pruner.export import save_pruned_program\n"
            "from pruner.models.cifar_resnet import cifar_resnet\n"
            "try:\n"
            "    save_pruned_program(cifar_resnet('resnet20', 10).eval(), sys.argv[1], input_size=(3, 32, 32))\n"
            "except PrunerError as exc:\n"
            "    print('error:', exc); sys.exit(2)\n")
    res = subprocess.run([sys.executable, "-c", code, str(full_disk / "pruned.pt2")], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr[-2000:]   # old code: 134, a C++ terminate
    lines = [line for line in res.stdout.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "--resume" in lines[0], res.stdout
    assert "terminate" not in res.stderr
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]


def test_a_submit_on_a_full_disk_leaves_no_directory_behind(full_disk):
    from pruner.errors import PrunerError
    from pruner.runs.manager import JobManager, JobSpec
    from pruner.runs.rundir import RunDir

    manager = JobManager(max_parallel=1)
    try:
        spec = JobSpec(kind="prune", config={"model": "resnet20", "data": "digits", "budget": "flops=0.5",
                                             "note": "x" * 400_000}, out=str(full_disk / "run"))
        with pytest.raises(PrunerError) as info:
            manager.submit(spec)
        message = str(info.value)
        assert "\n" not in message and "No space left on device" in message, message
        assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]   # no directory holding only job.lock
        (full_disk / "filler").unlink()                                    # space freed: the same name is free
        RunDir(spec.out).check_new()
        RunDir(spec.out).lock().release()
    finally:
        manager.shutdown(cancel=True)


def test_a_failed_write_is_named_as_the_disk_with_how_to_resume(tmp_path):
    from pruner.runs.job import _write_failure

    message = _write_failure(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "run")
    assert "No space left on device" in message and "--resume" in message and "\n" not in message
    assert _write_failure(OSError(errno.EACCES, "Permission denied"), tmp_path) is None
    assert _write_failure(ValueError("a bug"), tmp_path) is None


def test_torch_saves_on_a_full_disk_raise_oserror_and_leave_nothing(full_disk):
    import torch

    from pruner.atomic import torch_save_atomic
    from pruner.runs.job import _write_failure

    with pytest.raises(OSError) as info:   # torch.save to a path raised a C++ RuntimeError here
        torch_save_atomic({"w": torch.zeros(200_000)}, full_disk / "epoch-1.pt")
    assert info.value.errno == errno.ENOSPC and "--resume" in _write_failure(info.value, full_disk)
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]
