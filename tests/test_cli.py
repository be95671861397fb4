"""What every stage shares: freed memory kept for reuse."""

from __future__ import annotations

import subprocess
import sys

# A step that makes and frees vocabulary-sized tensors, as every MAML step and edit measurement does;
# prints the page faults of its last repetition.
PROBE = """
import resource, sys, torch
from editable_lm.cli import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.log_softmax(torch.ones(256, 50_000), dim=-1).sum().item()  # 51 MB each
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults_of_a_repeated_step(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def test_freed_memory_is_reused_without_page_faults():
    """glibc's default maps every large block fresh from the kernel, a page fault per 4 KB page (two 51 MB
    tensors: ~25,000); with `keep_freed_memory` a repeated step reuses the memory it freed."""
    assert page_faults_of_a_repeated_step("default") > 10_000
    assert page_faults_of_a_repeated_step("keep") < 1_000
