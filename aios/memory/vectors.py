"""The vector index over agents' memory embeddings: sqlite-vec on SQLite, pgvector on
PostgreSQL, and an exact scan in NumPy where the database has neither extension (it says
so: `kind` is reported with every search).

The embeddings themselves live in `memory_vectors` (a plain table, in the migrations):
that is the truth. The index is derived from it, one table per model, named
`memory_ann_<model>` (Alembic leaves such tables alone): made when first needed, rebuilt
from `memory_vectors` when its count differs, written in the same transaction as the
vectors, so the two never disagree after a commit.

All methods take an open SQLAlchemy connection: the caller owns the transaction."""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from sqlalchemy import Connection, Engine, delete, func, select, text

from aios.memory.embed import from_bytes, vector_bytes
from aios.storage.models import DERIVED_PREFIX, MemoryVectorRow


def table_name(model: str) -> str:
    return DERIVED_PREFIX + re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")[:40]


class VectorIndex:
    """Cosine k-nearest neighbours among one agent's vectors of one model."""
    kind = "exact"

    def __init__(self, model: str, dim: int):
        self.model, self.dim, self.table = model, dim, table_name(model)
        self._ready = False

    def ensure(self, conn: Connection) -> None:
        """Makes the index table if it is missing, and rebuilds it if it has drifted."""
        if self._ready:
            return
        self._create(conn)
        if self._count(conn) != self._stored(conn):
            self._clear(conn)
            rows = conn.execute(select(MemoryVectorRow.entry_id, MemoryVectorRow.pid, MemoryVectorRow.vector)
                                .where(MemoryVectorRow.model == self.model)).all()
            for entry_id, pid, vec in rows:
                self._insert(conn, entry_id, pid, from_bytes(vec))
        self._ready = True

    def add(self, conn: Connection, entry_id: int, pid: int, vec: np.ndarray) -> None:
        conn.execute(MemoryVectorRow.__table__.insert().values(
            entry_id=entry_id, pid=pid, model=self.model, dim=self.dim, vector=vector_bytes(vec)))
        self._insert(conn, entry_id, pid, vec)

    def remove(self, conn: Connection, entry_ids: Sequence[int]) -> None:
        if entry_ids:
            conn.execute(delete(MemoryVectorRow).where(MemoryVectorRow.entry_id.in_(list(entry_ids))))
            self._delete(conn, entry_ids)

    def search(self, conn: Connection, pid: int, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        """(entry id, cosine distance), nearest first."""
        rows = conn.execute(select(MemoryVectorRow.entry_id, MemoryVectorRow.vector)
                            .where(MemoryVectorRow.pid == pid, MemoryVectorRow.model == self.model)).all()
        if not rows:
            return []
        mat = np.stack([from_bytes(v) for _, v in rows])
        dist = 1.0 - mat @ np.asarray(query, dtype=np.float32)
        order = np.argsort(dist, kind="stable")[:k]
        return [(rows[i][0], float(dist[i])) for i in order]

    def _stored(self, conn: Connection) -> int:
        """How many vectors of this model `memory_vectors` holds."""
        return conn.execute(select(func.count()).select_from(MemoryVectorRow)
                            .where(MemoryVectorRow.model == self.model)).scalar_one()

    # the derived table: none for the exact scan (its count is the stored one)
    def _create(self, conn: Connection) -> None: ...
    def _count(self, conn: Connection) -> int:
        return self._stored(conn)
    def _clear(self, conn: Connection) -> None: ...
    def _insert(self, conn: Connection, entry_id: int, pid: int, vec: np.ndarray) -> None: ...
    def _delete(self, conn: Connection, entry_ids: Sequence[int]) -> None: ...


class SqliteVecIndex(VectorIndex):
    """A sqlite-vec `vec0` virtual table, partitioned by agent, cosine distance."""
    kind = "sqlite-vec"

    def _create(self, conn: Connection) -> None:
        conn.exec_driver_sql(f"CREATE VIRTUAL TABLE IF NOT EXISTS {self.table} USING vec0("
                             f"pid integer partition key, embedding float[{self.dim}] distance_metric=cosine)")

    def _count(self, conn: Connection) -> int:
        return conn.exec_driver_sql(f"SELECT count(*) FROM {self.table}").scalar_one()

    def _clear(self, conn: Connection) -> None:
        conn.exec_driver_sql(f"DELETE FROM {self.table}")

    def _insert(self, conn: Connection, entry_id: int, pid: int, vec: np.ndarray) -> None:
        conn.exec_driver_sql(f"INSERT INTO {self.table}(rowid, pid, embedding) VALUES (?, ?, ?)",
                             (entry_id, pid, vector_bytes(vec)))

    def _delete(self, conn: Connection, entry_ids: Sequence[int]) -> None:
        conn.exec_driver_sql(f"DELETE FROM {self.table} WHERE rowid IN ({','.join('?' * len(entry_ids))})",
                             tuple(entry_ids))

    def search(self, conn: Connection, pid: int, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        rows = conn.exec_driver_sql(f"SELECT rowid, distance FROM {self.table} WHERE embedding MATCH ? "
                                    "AND k = ? AND pid = ? ORDER BY distance", (vector_bytes(query), k, pid)).all()
        return [(int(r), float(d)) for r, d in rows]


def _literal(vec: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(vec, dtype=np.float32)) + "]"


class PgVectorIndex(VectorIndex):
    """A pgvector column with an HNSW index (cosine); the rows go when their entry does."""
    kind = "pgvector"

    def _create(self, conn: Connection) -> None:
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {self.table} (entry_id integer PRIMARY KEY "
                          "REFERENCES memory_entries(id) ON DELETE CASCADE, pid integer NOT NULL, "
                          f"embedding vector({self.dim}) NOT NULL)"))
        conn.execute(text(f"CREATE INDEX IF NOT EXISTS {self.table}_hnsw ON {self.table} "
                          "USING hnsw (embedding vector_cosine_ops)"))
        conn.execute(text(f"CREATE INDEX IF NOT EXISTS {self.table}_pid ON {self.table} (pid)"))

    def _count(self, conn: Connection) -> int:
        return conn.execute(text(f"SELECT count(*) FROM {self.table}")).scalar_one()

    def _clear(self, conn: Connection) -> None:
        conn.execute(text(f"DELETE FROM {self.table}"))

    def _insert(self, conn: Connection, entry_id: int, pid: int, vec: np.ndarray) -> None:
        conn.execute(text(f"INSERT INTO {self.table} (entry_id, pid, embedding) VALUES (:e, :p, CAST(:v AS vector))"),
                     {"e": entry_id, "p": pid, "v": _literal(vec)})

    def _delete(self, conn: Connection, entry_ids: Sequence[int]) -> None:
        conn.execute(text(f"DELETE FROM {self.table} WHERE entry_id = ANY(:ids)"), {"ids": list(entry_ids)})

    def search(self, conn: Connection, pid: int, query: np.ndarray, k: int) -> list[tuple[int, float]]:
        sql = text(f"SELECT entry_id, embedding <=> CAST(:q AS vector) AS d FROM {self.table} "
                   "WHERE pid = :pid ORDER BY d LIMIT :k")
        args = {"q": _literal(query), "pid": pid, "k": k}
        # HNSW filters by agent after the graph search: widen the search, and if it still
        # comes back short while the agent has more vectors, scan exactly
        conn.execute(text(f"SET LOCAL hnsw.ef_search = {max(40, min(1000, 10 * k))}"))
        rows = conn.execute(sql, args).all()
        if len(rows) < k:
            have = conn.execute(text(f"SELECT count(*) FROM {self.table} WHERE pid = :pid"), {"pid": pid}).scalar_one()
            if len(rows) < min(k, have):
                conn.execute(text("SET LOCAL enable_indexscan = off"))
                rows = conn.execute(sql, args).all()
        return [(int(e), float(d)) for e, d in rows]


def choose(engine: Engine, model: str, dim: int) -> tuple[VectorIndex, str | None]:
    """The best index this database offers, and why not a better one (None when the best)."""
    if engine.dialect.name == "sqlite":
        missing = getattr(engine, "aios_sqlite_vec_missing", "the engine was not opened by aios.storage.db")
        return (SqliteVecIndex(model, dim), None) if missing is None else (VectorIndex(model, dim), missing)
    if engine.dialect.name == "postgresql":
        try:
            with engine.begin() as conn:
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
                version = conn.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar_one()
        except Exception as e:   # noqa: BLE001 (any refusal means: no pgvector on this server)
            first = str(getattr(e, "orig", e)).splitlines()[0]
            return VectorIndex(model, dim), f"the server has no pgvector ({first})"
        if tuple(int(x) for x in re.findall(r"\d+", version)[:2]) < (0, 5):
            return VectorIndex(model, dim), f"the server's pgvector {version} has no HNSW index (0.5 or newer has)"
        return PgVectorIndex(model, dim), None
    return VectorIndex(model, dim), f"no vector extension for {engine.dialect.name}"
