import errno

import protrans_cli.io.h5 as h5


def test_marker_room_keeps_a_block_when_a_mebibyte_is_not_free(tmp_path, monkeypatch):
    """A disk with less than 1 MiB free: the list of untrusted ids still gets written."""
    if h5._native_fallocate() is None:
        import pytest
        pytest.skip("no fallocate(2)")
    real = h5.fallocate

    def small_disk(fd, nbytes):
        if nbytes > 64 << 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, nbytes)

    monkeypatch.setattr(h5, "fallocate", small_disk)
    partial = tmp_path / "o.h5.partial"
    room = h5._MarkerRoom(partial)
    assert room.fh is not None
    real_open = open

    def full_open(path, mode="r", *a, **k):  # the disk is full by now: no new file's data fits
        if "untrusted" in str(path) and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", full_open)
    digests = h5.digest128("P1") + h5.digest128("P2")
    room.write(digests)
    assert h5.untrusted_path(partial).read_bytes() == digests
