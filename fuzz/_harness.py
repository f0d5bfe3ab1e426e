"""What every fuzz target does when run as a script.

``python fuzz/fuzz_x.py --write-seeds DIR`` writes the target's ``seeds()``
into DIR; anything else runs the target under atheris with libFuzzer's
arguments. atheris is imported only here, only then.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


def run(test_one_input: Callable[[bytes], None], seeds: Callable[[], dict[str, bytes]]) -> None:
    if sys.argv[1:2] == ["--write-seeds"]:
        directory = Path(sys.argv[2])
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in seeds().items():
            (directory / name).write_bytes(data)
        return
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
