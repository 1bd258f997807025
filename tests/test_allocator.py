"""The allocator setting: once in force, a large buffer freed and allocated again costs no new page faults."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="a glibc setting"
)

PROBE = """
import json, resource, sys
from glass_ad.allocator import keep_freed_memory
applied = keep_freed_memory()
SIZE = int(sys.argv[1]) << 20
def touch():  # SIZE bytes, written so that every page is really mapped
    buffer = bytearray(SIZE)
    buffer[::4096] = b"x" * len(buffer[::4096])
    del buffer
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    touch()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(megabytes: int = 64, **env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(megabytes)], env=environment, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    kept, returned = _probe(), _probe(GLASS_KEEP_FREED_MEMORY="0")
    assert kept["applied"] and not returned["applied"]
    pages = 3 * (64 << 20) // 4096
    assert returned["faults"] > pages // 2  # each new 64 MB buffer is a fresh mapping: a fault per page
    assert kept["faults"] < pages // 20  # the heap hands the same memory back


def test_one_off_arrays_above_the_threshold_still_go_back_to_the_os():
    # A 320 MB array (above MMAP_THRESHOLD) is a mapping of its own: freed, its pages are returned, and the
    # next one is faulted in again. Only batch-sized buffers stay with the process.
    kept = _probe(megabytes=320)
    assert kept["applied"]
    assert kept["faults"] > 3 * (320 << 20) // 4096 // 2


def test_the_users_own_glibc_settings_stand():
    assert not _probe(MALLOC_TRIM_THRESHOLD_="65536")["applied"]
