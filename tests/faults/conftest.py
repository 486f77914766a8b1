"""The fault-injection suite's ledger: every test records the faults it injects, the runs that
recovered and any data lost; the session ends with one summary line.

    def test_it(fault_ledger):
        fault_ledger.injected("SIGKILL ingest task")
        ...
        fault_ledger.recovered("run survived SIGKILL of ingest")
        fault_ledger.lost(missing)

``missing`` is measured, never assumed: the pages / rows / files the faulted run's outputs lack when
compared with a reference run or with the input that was served. Record it before the assertions (a
failing assertion would otherwise leave the loss out of the summary).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest


@dataclass
class FaultLedger:
    faults: Counter = field(default_factory=Counter)
    recoveries: Counter = field(default_factory=Counter)
    data_lost: int = 0

    def injected(self, what: str, count: int = 1) -> None:
        self.faults[what] += count

    def recovered(self, what: str, count: int = 1) -> None:
        self.recoveries[what] += count

    def lost(self, count: int) -> None:
        self.data_lost += count

    def summary(self) -> str:
        return (
            f"faults injected: {sum(self.faults.values())}, runs recovered: {sum(self.recoveries.values())}, "
            f"data lost: {self.data_lost}"
        )


LEDGER = FaultLedger()


@pytest.fixture
def fault_ledger() -> FaultLedger:
    return LEDGER


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not LEDGER.faults:
        return
    terminalreporter.write_sep("-", "fault injection")
    for what, count in sorted(LEDGER.faults.items()):
        terminalreporter.write_line(f"  injected {count} x {what}")
    for what, count in sorted(LEDGER.recoveries.items()):
        terminalreporter.write_line(f"  recovered {count} x {what}")
    terminalreporter.write_line(LEDGER.summary())
