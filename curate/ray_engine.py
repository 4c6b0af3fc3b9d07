"""The Ray engine: scorers run through Ray Data on a Ray cluster (``--engine ray``).

Only what differs from the local engine lives here; the plan runner
(``curate.runner``) does the rest, so a run on Ray has the same run directory,
the same ids, the same selected rows and the same rejected reasons as a local run.

- ``map_batches``: the wanted rows of the data parts are read with
  ``ray.data.read_parquet`` (only the scorer's input columns, the id filter pushed
  into the Parquet scan) and mapped in Arrow format. A scorer that declares
  single-core work (``Resources(cpus=1)``, e.g. quality, MinHash) runs as Ray tasks,
  one per CPU; any other scorer (a model) runs in an actor pool, one actor per
  replica, each loading the model once, with the GPUs its ``resources`` declare
  (fractional where a small model shares a GPU). Only ``id`` + score columns come
  back to the driver. A worker that dies mid-batch is retried by Ray; the runner's
  cache keeps one score per id, so no row is lost or counted twice.
- ``map_tasks`` (ingest): one Ray task per input file turns it into canonical data
  parts; the engine's ``ingest`` checks the files against each other, as on the
  local engine. The data parts go to the run directory, which every node must see
  (a shared filesystem on a multi-node cluster).
- ``read_rows`` is the local engine's (decision steps read texts only of the rows
  they need, by id).
- ``map_groups``: a Ray Data group-by (hash shuffle) over the key modulo a number of
  pieces, so the function runs once per piece on the cluster, not once per key value.
  MinHash candidate pairs are made this way from the band hashes; only the compact
  band table goes out and the pairs come back.

Connect to a running cluster with ``address`` (``ray://HOST:10001`` or
``HOST:6379``), or the ``RAY_ADDRESS`` environment variable; with neither, a local
cluster is started for the run.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.engine import Engine, Part, read_part, register_engine, score_rows
from curate.errors import CurateError
from curate.scorer import Scorer

INSTALL = "pip install -e '.[ray]'"


def _ray():
    try:
        import ray
    except ImportError as err:
        raise CurateError(f"the ray engine needs Ray: {INSTALL} (or pip install 'ray[data]')") from err
    return ray


def _probe(address: str, timeout: float = 5.0) -> None:
    """CurateError unless something listens at ``address`` (Ray itself would retry for
    minutes before it gives up)."""
    if address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except (OSError, ValueError) as err:
        raise CurateError(f"cannot connect to the Ray cluster at {address}: {err} (is a head "
                          "node running there? start one with `ray start --head`)") from err


_TASK_SCORERS: dict[str, Scorer] = {}  # per worker process: scorers set up by earlier tasks


def _score_task(table: pa.Table, scorer: Scorer) -> pa.Table:
    """A Ray task: score one block with a single-core scorer (set up once per process)."""
    key = scorer.cache_key()
    if key not in _TASK_SCORERS:
        scorer.setup()
        _TASK_SCORERS[key] = scorer
    return score_rows(_TASK_SCORERS[key], table)


def _actor_class(scorer: Scorer) -> type:
    """A Ray actor class holding one set-up copy of ``scorer`` (a model loaded once per
    actor). The scorer travels inside the class, not as constructor arguments, so Ray
    can restart a dead actor without them."""

    class ScoreActor:
        def __init__(self) -> None:
            scorer.setup()

        def __call__(self, table: pa.Table) -> pa.Table:
            return score_rows(scorer, table)

    ScoreActor.__name__ = ScoreActor.__qualname__ = f"Score_{scorer.name}"
    return ScoreActor


@register_engine
class RayEngine(Engine):
    """Ray Data on a local or remote Ray cluster (see the module docstring)."""

    name = "ray"
    distributed = True

    def __init__(self, *, address: str | None = None, **options: Any):
        super().__init__(**options)
        ray = _ray()
        self.address = address or os.environ.get("RAY_ADDRESS")
        if not ray.is_initialized():
            # Ray's C++ core logs internal notices (e.g. about Ray Data's own actor
            # arguments) straight to stderr; failures still arrive as Python exceptions
            os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
            if self.address:
                _probe(self.address)
            try:
                ray.init(address=self.address, logging_level=logging.ERROR,
                         log_to_driver=False, include_dashboard=False,
                         **({} if self.address else {"num_cpus": options.get("workers")}))
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise CurateError(f"cannot connect to the Ray cluster at {self.address}: "
                                  f"{str(err).splitlines()[0]}") from err
        from ray.data import DataContext

        logging.getLogger("ray.data").setLevel(logging.ERROR)  # the runner reports progress
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # the runner shows its own progress
        ctx.print_on_execution_start = False
        self.cluster = ray.cluster_resources()
        self.workers = max(1, int(self.cluster.get("CPU", 1)))

    def map_tasks(self, fn: Callable, calls: list[tuple]) -> Iterator[tuple[int, Any]]:
        """One Ray task per call (ingest: one per input file; see the module docstring)."""
        ray = _ray()
        task = ray.remote(num_cpus=1)(fn)
        pending = {task.remote(*call): k for k, call in enumerate(calls)}
        while pending:  # as files finish, in any order
            (ref,), _ = ray.wait(list(pending))
            k = pending.pop(ref)
            try:
                yield k, ray.get(ref)
            except CurateError as err:  # Ray's wrapper is an instance of the cause's class too
                yield k, getattr(err, "cause", err)

    def map_groups(self, table: pa.Table, key: str, fn: Callable[[pa.Table], pa.Table]) -> pa.Table:
        import ray.data

        if not table.num_rows:
            return fn(table)
        pieces = max(2, self.workers, table.num_rows // 1_000_000)
        piece = pa.array(table.column(key).to_numpy() % pieces, pa.int64())
        keyed = table.append_column("_piece", piece)
        # blocks for the map side of the shuffle: a few, of at least 10k rows
        bounds = np.linspace(0, keyed.num_rows, max(1, min(pieces, keyed.num_rows // 10_000)) + 1)
        ds = ray.data.from_arrow([keyed.slice(int(a), int(b) - int(a))
                                  for a, b in zip(bounds, bounds[1:])])
        out = ds.groupby("_piece", num_partitions=pieces).map_groups(
            lambda t: fn(t.drop_columns(["_piece"])), batch_format="pyarrow")
        tables = [t for t in ray.get(out.to_arrow_refs()) if t.num_rows]
        return pa.concat_tables(tables) if tables else fn(table.slice(0, 0))

    def check_resources(self, scorer: Scorer) -> None:
        """CurateError, instead of a run that waits forever, when no node can give one
        replica of ``scorer`` what it declares."""
        gpus = scorer.resources.gpus
        have = self.cluster.get("GPU", 0)
        if gpus and have < gpus:
            raise CurateError(f"scorer {scorer.name!r} needs {gpus:g} GPU(s) per replica but the "
                              f"Ray cluster has {have:g}: add GPU nodes, or run the scorer on the "
                              "CPU (device='cpu')")

    def map_batches(self, scorer: Scorer, parts: list[Part], columns: list[str]) -> Iterator[pa.Table]:
        from ray.data import ActorPoolStrategy, read_parquet
        from ray.data.expressions import col

        self.check_resources(scorer)
        wanted = [p for p in parts if p.rows]
        if not wanted:
            return
        # the schema of only these columns: parts may differ in an original column's type
        schema = pq.read_schema(wanted[0].path)
        ds = read_parquet([str(p.path) for p in wanted],
                          schema=pa.schema([schema.field(c) for c in columns])).select_columns(columns)
        rows = sum(p.rows for p in wanted)
        if rows < sum(Part(p.path).rows for p in wanted):
            # some rows are not wanted: Ray pushes the id filter into the Parquet scan
            ids = [p.ids if p.ids is not None else read_part(p, ["id"])["id"].combine_chunks()
                   for p in wanted]
            ds = ds.filter(expr=col("id").is_in(pa.concat_arrays(
                [i.cast(pa.string()) for i in ids]).to_pylist()))
        # blocks enough for every worker (a part is one block otherwise), not too small
        ds = ds.repartition(min(max(len(wanted), 4 * self.workers), max(1, rows // self.batch_rows)))
        r = scorer.resources
        if r.cpus is not None and not r.gpus:
            out = ds.map_batches(_score_task, fn_kwargs={"scorer": scorer}, batch_format="pyarrow",
                                 batch_size=max(self.batch_rows, 2048), num_cpus=r.cpus)
            replicas = max(1, int(self.workers // r.cpus))
        else:
            replicas = max(1, int(self.cluster.get("GPU", 0) // r.gpus)) if r.gpus else 1
            out = ds.map_batches(_actor_class(scorer), batch_format="pyarrow",
                                 batch_size=scorer.batch_rows or self.batch_rows,
                                 compute=ActorPoolStrategy(size=replicas), num_cpus=1,
                                 num_gpus=r.gpus or None)
        self.info[scorer.name] = {"workers": replicas, "setup": {}}
        for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
            if batch.num_rows:
                yield batch
        self.info[scorer.name]["setup"] = {"engine": "ray", "replicas": replicas,
                                           "gpus_per_replica": r.gpus}
