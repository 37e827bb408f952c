"""A decode job that dies as a native codec crash does (SIGABRT, as GDCM's uncaught C++ exception), for one file.

Module-level so that a decode worker process can unpickle it by name.
"""

from __future__ import annotations

import os

from predictd.models.decode_pool import Plan, Prepared, prepare_file

POISON_SUFFIX = "poison.dcm"


def prepare_or_abort(path: str, plan: Plan) -> Prepared:
    if path.endswith(POISON_SUFFIX):
        os.abort()
    return prepare_file(path, plan)
