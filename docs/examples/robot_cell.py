"""One station of a robot cell: the stations start every step of a job together.

Run one per machine::

    python robot_cell.py --redis redis://cell-server:6379/0 --run job-42 --stations 3

The work is in :func:`run_station`, which takes a ready :class:`~pyprocsync.ProcSync`:
a test can hand it one on fakeredis, or on a real server.
"""

from __future__ import annotations

import argparse
import json

import redis

from pyprocsync import ProcSync


def run_station(sync: ProcSync, stations: int, steps: int, timeout: float = 30.0) -> list[float]:
    """Do ``steps`` steps, each started together with the other stations.

    :returns: the release instant of every step (the same on every station).
    :raises pyprocsync.TimeOutError: a station did not show up within ``timeout`` s.
    :raises pyprocsync.BrokenBarrierError: another station gave up or was lost.
    """
    instants = []
    for _step in range(steps):
        result = sync.sync("step", stations, timeout)
        instants.append(result.release_at)
        # ... this station's work for the step ...
    return instants


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", required=True, help="URL of the cell's Redis server")
    parser.add_argument("--run", required=True, help="the job's run id")
    parser.add_argument("--stations", type=int, required=True)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    with redis.Redis.from_url(args.redis) as client, ProcSync(client, args.run, 0.05) as sync:
        print(json.dumps(run_station(sync, args.stations, args.steps)))


if __name__ == "__main__":
    main()
