"""The inspection log: one row per inspected image, in SQLite (default) or PostgreSQL, via SQLAlchemy.

    log = InspectionLog.open("sqlite:///serve-data/inspections.db")    # or "postgresql://user@host/db"
    ids = log.write_many([row, ...])                                   # one transaction
    page = log.query(since=..., decision="anomalous", limit=50)

The schema is created on first use and migrated forward on start (`SCHEMA_VERSION`, stored in the
`glass_schema` table); a database written by a newer version is refused rather than guessed at.
Times are stored as UTC without a zone (the same on both back ends) and come back zone-aware.

Durability: SQLite runs in WAL mode with ``synchronous=FULL``, so a committed row survives the process
being killed and the machine losing power; the service answers a request only after its row committed.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

__all__ = [
    "SCHEMA_VERSION",
    "DECISIONS",
    "REVIEW_LABELS",
    "InspectionLog",
    "DatabaseError",
    "database_url",
    "inspections",
    "redact_url",
]

SCHEMA_VERSION = 1
DECISIONS = ("normal", "anomalous")
REVIEW_LABELS = ("defect", "good")


class DatabaseError(RuntimeError):
    """The inspection log cannot be opened or used (bad URL, unreachable server, newer schema)."""


class UTCDateTime(TypeDecorator):
    """Aware datetimes in, aware (UTC) datetimes out; stored as naive UTC on every back end."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("inspection times must be timezone-aware")
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.timezone.utc)


metadata = MetaData()

# BigInteger ids on PostgreSQL; SQLite only autoincrements an INTEGER PRIMARY KEY.
_ID = BigInteger().with_variant(Integer(), "sqlite")

inspections = Table(
    "inspections",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("created_at", UTCDateTime(), nullable=False, comment="when the answer was ready (UTC)"),
    Column("model_name", String(128), nullable=False),
    Column("model_version", String(64), nullable=False, comment="first 16 hex digits of the checkpoint's SHA-256"),
    Column("engine", String(16), nullable=False),
    Column("filename", String(255), nullable=True, comment="as sent by the client; never used as a path"),
    Column("image_sha256", String(64), nullable=False),
    Column("image_bytes", Integer, nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("score", Float, nullable=False),
    Column("normalized_score", Float, nullable=False),
    Column("decision", String(16), nullable=False),
    Column("threshold", Float, nullable=False),
    Column("threshold_kind", String(16), nullable=False),
    Column("region_fraction", Float, nullable=False),
    Column("overlay_path", String(255), nullable=True, comment="relative to the service's data folder"),
    Column("mask_path", String(255), nullable=True, comment="relative to the service's data folder"),
    Column("latency_ms", Float, nullable=False),
    Column("review", String(16), nullable=True, comment="operator's verdict: defect | good"),
    Column("reviewed_at", UTCDateTime(), nullable=True),
    Index("ix_inspections_created_at", "created_at"),
    Index("ix_inspections_model_created", "model_name", "created_at"),
    Index("ix_inspections_decision", "decision"),
    Index("ix_inspections_image_sha256", "image_sha256"),
)

schema_info = Table(
    "glass_schema",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
)

# Forward migrations: MIGRATIONS[v] takes a database at version v to v + 1 (SQL per dialect if needed).
MIGRATIONS: dict[int, Sequence[str]] = {}


def database_url(value: str | None, data_dir) -> str:
    """`--db` as given (a SQLAlchemy URL or ``postgresql://…``), a plain file path as SQLite, or the
    default ``sqlite:///DATA_DIR/inspections.db``."""
    from pathlib import Path

    if not value:
        return f"sqlite:///{Path(data_dir).resolve() / 'inspections.db'}"
    if "://" not in value:
        return f"sqlite:///{Path(value).resolve()}"
    if value.startswith("postgresql://") or value.startswith("postgres://"):
        # psycopg 3 is the driver we install; SQLAlchemy's bare postgresql:// would mean psycopg2.
        return "postgresql+psycopg://" + value.split("://", 1)[1]
    return value


def redact_url(url: str) -> str:
    """The URL with any password hidden (for logs and /v1/models)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


@dataclass
class Page:
    rows: list[dict[str, Any]]
    next_before: int | None  # pass as before_id for the next (older) page; None on the last page


class InspectionLog:
    """Schema management, writes and queries of the inspection log."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write_lock = threading.Lock()  # one writer at a time (SQLite has one anyway)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> "InspectionLog":
        """Connect, then create or migrate the schema. Raises `DatabaseError` with the reason."""
        try:
            parsed = make_url(url)
        except ArgumentError as error:
            raise DatabaseError(f"invalid database URL {url!r}: {error}") from None
        kwargs: dict[str, Any] = {"future": True}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                from pathlib import Path

                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        else:
            kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=5)
            if parsed.get_backend_name() == "postgresql":
                # An unreachable server fails a request (503) within seconds instead of hanging it.
                kwargs["connect_args"] = {"connect_timeout": 5}
        try:
            engine = create_engine(parsed, **kwargs)
        except (ArgumentError, ImportError, SQLAlchemyError) as error:
            raise DatabaseError(f"cannot use database {redact_url(url)}: {error}") from None
        if parsed.get_backend_name() == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        log = cls(engine)
        if migrate:
            log.migrate()
        return log

    @property
    def backend(self) -> str:
        return self.engine.url.get_backend_name()

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """A trivial query; raises SQLAlchemyError when the database does not answer."""
        with self.engine.connect() as conn:
            conn.execute(select(1)).scalar()

    # ----------------------------------------------------------------------------------------- schema

    def schema_version(self) -> int | None:
        try:
            with self.engine.connect() as conn:
                if not inspect(conn).has_table(schema_info.name):
                    return None
                value = conn.execute(select(schema_info.c.value).where(schema_info.c.key == "version")).scalar()
        except SQLAlchemyError as error:
            raise DatabaseError(f"cannot read database {redact_url(str(self.engine.url))}: {_short(error)}") from None
        return int(value) if value is not None else None

    def migrate(self) -> int:
        """Create the tables on an empty database, or apply the forward migrations; returns the version."""
        version = self.schema_version()
        try:
            with self.engine.begin() as conn:
                if version is None:
                    metadata.create_all(conn)
                    conn.execute(insert(schema_info).values(key="version", value=str(SCHEMA_VERSION)))
                    return SCHEMA_VERSION
                if version > SCHEMA_VERSION:
                    raise DatabaseError(
                        f"the inspection log has schema version {version}, newer than this glass-ad "
                        f"({SCHEMA_VERSION}); upgrade glass-ad or use another --db"
                    )
                while version < SCHEMA_VERSION:
                    for statement in MIGRATIONS[version]:
                        conn.execute(text(statement))
                    version += 1
                    conn.execute(update(schema_info).where(schema_info.c.key == "version").values(value=str(version)))
        except SQLAlchemyError as error:
            raise DatabaseError(f"cannot set up the inspection log: {_short(error)}") from None
        return version

    # ----------------------------------------------------------------------------------------- writes

    def write_many(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Insert rows in one transaction; returns their ids in order once committed."""
        if not rows:
            return []
        with self._write_lock, self.engine.begin() as conn:
            result = conn.execute(
                insert(inspections).returning(inspections.c.id, sort_by_parameter_order=True), list(rows)
            )
            return [int(row[0]) for row in result]

    def set_review(self, inspection_id: int, label: str | None) -> bool:
        """Record the operator's verdict (``defect``, ``good``, or None to clear); False when no such row."""
        if label is not None and label not in REVIEW_LABELS:
            raise ValueError(f"review must be one of {', '.join(REVIEW_LABELS)} (or null), got {label!r}")
        when = dt.datetime.now(dt.timezone.utc) if label is not None else None
        with self._write_lock, self.engine.begin() as conn:
            result = conn.execute(
                update(inspections).where(inspections.c.id == inspection_id).values(review=label, reviewed_at=when)
            )
            return result.rowcount > 0

    # ---------------------------------------------------------------------------------------- queries

    def get(self, inspection_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(inspections).where(inspections.c.id == inspection_id)).mappings().first()
        return dict(row) if row is not None else None

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(inspections)).scalar_one())

    def query(
        self,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        decision: str | None = None,
        model: str | None = None,
        review: str | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> Page:
        """Newest first; page with ``before_id=page.next_before``."""
        if decision is not None and decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
        if review is not None and review not in (*REVIEW_LABELS, "none"):
            raise ValueError(f"review must be one of {', '.join(REVIEW_LABELS)} or none, got {review!r}")
        statement = select(inspections)
        if since is not None:
            statement = statement.where(inspections.c.created_at >= since)
        if until is not None:
            statement = statement.where(inspections.c.created_at < until)
        if decision is not None:
            statement = statement.where(inspections.c.decision == decision)
        if model is not None:
            statement = statement.where(inspections.c.model_name == model)
        if review == "none":
            statement = statement.where(inspections.c.review.is_(None))
        elif review is not None:
            statement = statement.where(inspections.c.review == review)
        if before_id is not None:
            statement = statement.where(inspections.c.id < before_id)
        statement = statement.order_by(inspections.c.id.desc()).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = [dict(row) for row in conn.execute(statement).mappings()]
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, rows[-1]["id"] if more and rows else None)

    def iter_outcomes(self) -> Iterator[tuple[dt.datetime, str, str, str | None]]:
        """(time, model, decision, review) of every inspection, oldest first, streamed (for reports)."""
        columns = (inspections.c.created_at, inspections.c.model_name, inspections.c.decision, inspections.c.review)
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=5000).execute(select(*columns).order_by(inspections.c.id))
            for row in result:
                yield row[0], row[1], row[2], row[3]


def _short(error: BaseException) -> str:
    return " ".join(str(getattr(error, "orig", None) or error).split())[:300]
