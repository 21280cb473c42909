"""A Ray worker setup hook for the fault tests: a worker kills itself (SIGKILL) the first time
it starts member 1, while ARM exists; DONE records that it happened, so the retry succeeds."""

import os
import signal
from pathlib import Path


def kill_once() -> None:
    arm = os.environ.get("MEMAUDIT_TEST_ARM")
    if not arm:
        return
    from memaudit.ensemble import member as ensemble

    compute = ensemble.compute_member

    def dying(ctx, j, column, on_step=None):
        done = Path(arm + ".done")
        if j == 1 and Path(arm).exists() and not done.exists():
            done.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return compute(ctx, j, column, on_step)

    ensemble.compute_member = dying
