"""Tests of robot_cell.py, with the fixtures of pyprocsync's pytest plugin.

Needs pyprocsync's ``testing`` extra (``pip install -e '.[testing]'`` in its repository); run with
``pytest test_robot_cell.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import robot_cell

from pyprocsync import BrokenBarrierError, TimeOutError
from pyprocsync.tools.pytest_plugin import FakeCell

SCRIPT = Path(robot_cell.__file__)


def test_stations_start_every_step_together(pyprocsync_fake: FakeCell) -> None:
    """In one process, without a server: three threads are the three stations."""
    with ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(robot_cell.run_station, pyprocsync_fake.procsync("job-1", 0.05), 3, 4)
            for _ in range(3)
        ]
        instants = [future.result(timeout=60) for future in futures]
    assert instants[0] == instants[1] == instants[2]
    assert len(set(instants[0])) == 4


def test_a_missing_station_stops_the_others(pyprocsync_fake: FakeCell) -> None:
    """Two stations of three: the first to time out breaks the step for the other."""
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(robot_cell.run_station, pyprocsync_fake.procsync("job-2", 0.05), 3, 1, 0.5)
            for _ in range(2)
        ]
        errors = [future.exception(timeout=60) for future in futures]
    assert all(isinstance(error, (TimeOutError, BrokenBarrierError)) for error in errors)


def test_three_processes_on_a_real_server(pyprocsync_url: str, pyprocsync_run_id: str) -> None:
    """Three processes of the script itself, on the session's embedded server."""
    command = [sys.executable, str(SCRIPT), "--redis", pyprocsync_url]
    command += ["--run", pyprocsync_run_id, "--stations", "3", "--steps", "3"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        outputs = [process.communicate(timeout=60)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert [process.returncode for process in processes] == [0, 0, 0]
    instants = [json.loads(output) for output in outputs]
    assert instants[0] == instants[1] == instants[2]
    assert len(instants[0]) == 3
