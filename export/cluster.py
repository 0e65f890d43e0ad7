"""The Dask cluster exports (and training) run on: an existing scheduler when one is named,
otherwise an in-process LocalCluster sized to this machine."""

from __future__ import annotations

import os

from distributed import Client, LocalCluster


def connect(address: str | None = None, threads: int | None = None):
    """A client, and the LocalCluster behind it when this process made one (else None)."""
    if address:
        return Client(address, timeout="30s"), None
    cluster = local_cluster(threads)
    return Client(cluster), cluster


def local_cluster(threads: int | None = None, *, for_others: bool = False) -> LocalCluster:
    """A scheduler and one worker in this process, listening on loopback only.

    One worker: onnxruntime already uses every core for one window, so more worker processes
    only split the same cores (bench/export_throughput.py measures it); two threads let one cell
    read and post-process while another infers. `tiledetect serve --workers N` runs one in its
    parent process (`for_others`: on TCP, not in-process transport) and gives its address to
    the N server processes.
    """
    # Loopback only, any free port: never a clash, never reachable from the network.
    network = {"protocol": "tcp://", "host": "127.0.0.1", "scheduler_port": 0} if for_others else {}
    return LocalCluster(
        n_workers=1,
        threads_per_worker=threads or min(2, os.cpu_count() or 1),
        processes=False,
        dashboard_address="127.0.0.1:0",
        **network,
    )
