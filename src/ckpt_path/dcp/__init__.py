"""Distributed checkpoints (``torch.distributed.checkpoint``, DCP): read from their metadata, written as DCP does.

A DCP checkpoint is a directory: a ``.metadata`` file (a pickle of DCP's ``Metadata``: every
entry's shape, dtype and chunks, and where each chunk's bytes lie) and data files
(``__R_N.distcp``) in which every tensor chunk, and every non-tensor entry, is one small
``torch.save`` archive at an offset. The stamp lives in ``.metadata`` itself, so it is read
without a data file and ``torch.distributed.checkpoint.load`` works as before.

**Reading** checks ``.metadata`` entry by entry before anything trusts it, and reads a
tensor's bytes only when a step computes from it or a writer needs it. **Writing** makes the
layout ``torch.distributed.checkpoint.save`` makes, copies unchanged chunks in the kernel,
and puts the directory in place all at once. One job per module:

- :mod:`ckpt_path.dcp._metadata`: ``.metadata`` unpickled with an allowlist and checked;
- :mod:`ckpt_path.dcp._read`: :func:`load`, lazy tensors over the data files, :func:`metadata_only`;
- :mod:`ckpt_path.dcp._write`: entries planned (:class:`Job`) and data files and ``.metadata`` written;
- :mod:`ckpt_path.dcp._materialize`: plain tensors for writers of other formats (see :mod:`ckpt_path.storage`);
- :mod:`ckpt_path.dcp._save`: an output directory written whole (:func:`save`);
  its temporary directory and atomic rename are :mod:`ckpt_path._atomic`'s.

:mod:`ckpt_path.distributed` runs the same writer in many processes, each writing its share of
the tensors. The names below are what the rest of ``ckpt_path`` uses; ``__all__`` is what
users may.
"""

from __future__ import annotations

from ckpt_path._atomic import remove_stale_directories as remove_stale_directories
from ckpt_path._atomic import removed_on_failure as removed_on_failure
from ckpt_path._atomic import temporary_directory as temporary_directory
from ckpt_path.dcp._materialize import materialized as materialized
from ckpt_path.dcp._metadata import FORMAT, METADATA, is_dcp
from ckpt_path.dcp._metadata import read_layout as read_layout
from ckpt_path.dcp._read import Reader as Reader
from ckpt_path.dcp._read import Unread, load, metadata_only
from ckpt_path.dcp._read import archive_records as archive_records
from ckpt_path.dcp._save import check_output as check_output
from ckpt_path.dcp._save import finish as finish
from ckpt_path.dcp._save import refuse_many as refuse_many
from ckpt_path.dcp._save import save, writes_dcp
from ckpt_path.dcp._write import Job as Job
from ckpt_path.dcp._write import WriteReport
from ckpt_path.dcp._write import flatten as flatten
from ckpt_path.dcp._write import plan_job as plan_job
from ckpt_path.dcp._write import write_share as write_share

__all__ = [
    "FORMAT",
    "METADATA",
    "Unread",
    "WriteReport",
    "is_dcp",
    "load",
    "metadata_only",
    "save",
    "writes_dcp",
]
