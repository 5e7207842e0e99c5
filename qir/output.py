"""Writing results so that a failure never leaves a half-written file or folder behind."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def staged_directory(outdir: Path):
    """Yield a fresh staging folder beside `outdir`; on success its files replace those of the same
    name in `outdir`; on any error it is removed and `outdir` is left as it was."""
    outdir = Path(outdir)
    outdir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", dir=outdir.parent))
    try:
        yield stage
        outdir.mkdir(exist_ok=True)
        for item in stage.iterdir():
            target = outdir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
