"""Writing files so that a reader never sees half of one: write under a temporary name beside the target,
then rename it into place (os.replace is atomic on one file system). Checkpoints, metrics.json, run_info.json,
`snnexp export`'s .nir, the frame cache, the digits cache, the CIFAR10-DVS split and the compiled CPU kernel are all
written this way. Torch-free."""

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temporary_name(path: Path) -> Path:
    """A name beside `path` that no other process or thread picks: `<name>.tmp-<pid>-<random>`."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write (a file or a folder); when the block ends, rename it onto
    `path`. If the block raises (a full disk, or a second Ctrl-C: KeyboardInterrupt) the temporary is removed and
    `path` is untouched. Only a process killed in the block (SIGKILL) leaves the temporary, which nothing reads:
    its name is never the target."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: an interrupted write leaves nothing behind
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path, data) -> None:
    """`data` as indented JSON, atomically; OSError (full disk, no permission) goes to the caller."""
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def write_atomic(path, data) -> None:
    """`data` (bytes, or a buffer such as BytesIO.getbuffer()) to `path`, atomically; OSError goes to the caller."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


# what to do when a run's folder cannot be written (a full disk): said by every write of a run
WRITE_ADVICE = "(free disk space, or give hydra.run.dir=... elsewhere)"
