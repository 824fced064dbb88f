"""The SQLite schema as an ordered list of migrations (MIGRATIONS, below), and `migrate`, which
runs those a file has not had; `PRAGMA user_version` records how far a file got."""

from __future__ import annotations

import sqlite3

from storage.errors import StorageUnavailable


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the store up to the newest schema: run, in order, each migration it has not had.
    Outside any transaction of the writer's (`WriterThread.call(..., in_transaction=False)`)."""
    row = conn.execute("PRAGMA user_version").fetchone()
    version = row[0] if row else 0
    if version > len(MIGRATIONS):
        raise StorageUnavailable(
            f"the database is at schema version {version}, newer than this localjobs ({len(MIGRATIONS)})"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        # executescript commits on its own; the version bump is part of the same script.
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")


# Each entry runs once, in order, inside one transaction. Never edit a released entry: append a new one.
MIGRATIONS: list[str] = [
    # 1: jobs, steps, tasks, logs.
    """
    CREATE TABLE jobs (
        pk              INTEGER PRIMARY KEY,
        id              TEXT NOT NULL UNIQUE,
        workspace       TEXT NOT NULL,
        name            TEXT NOT NULL,
        project         TEXT,
        description     TEXT,
        source          TEXT NOT NULL,
        spec            TEXT NOT NULL,
        platform_spec   TEXT NOT NULL,
        fileset         TEXT NOT NULL,
        output_location TEXT,
        ownership       TEXT,
        custom_fields   TEXT,
        auth_context    TEXT,
        attempt_id      TEXT NOT NULL,
        attempt_seq     INTEGER NOT NULL DEFAULT 0,
        status          TEXT NOT NULL,
        status_details  TEXT NOT NULL DEFAULT '{}',
        error_details   TEXT,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        UNIQUE (workspace, name)
    );
    CREATE INDEX jobs_ws_created ON jobs (workspace, created_at, pk);
    CREATE INDEX jobs_ws_updated ON jobs (workspace, updated_at, pk);
    CREATE INDEX jobs_ws_status ON jobs (workspace, status, created_at, pk);

    CREATE TABLE steps (
        pk              INTEGER PRIMARY KEY,
        id              TEXT NOT NULL UNIQUE,
        workspace       TEXT NOT NULL,
        job_pk          INTEGER NOT NULL REFERENCES jobs (pk) ON DELETE CASCADE,
        job_name        TEXT NOT NULL,
        job_source      TEXT NOT NULL,
        attempt_id      TEXT NOT NULL,
        fileset         TEXT NOT NULL,
        output_location TEXT,
        auth_context    TEXT,
        idx             INTEGER NOT NULL,
        name            TEXT NOT NULL,
        spec            TEXT NOT NULL,
        status          TEXT NOT NULL,
        status_details  TEXT NOT NULL DEFAULT '{}',
        error_details   TEXT,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        -- When the step last became active, and how long it was active before that (pauses
        -- excluded): together they give the time limit's deadline.
        active_since    INTEGER,
        active_us       INTEGER NOT NULL DEFAULT 0,
        handle          TEXT,
        UNIQUE (job_pk, name)
    );
    -- List Steps must not slow down with history: every filter/sort pair has an index to walk.
    CREATE INDEX steps_ws_created ON steps (workspace, created_at, pk);
    CREATE INDEX steps_ws_updated ON steps (workspace, updated_at, pk);
    CREATE INDEX steps_ws_job_created ON steps (workspace, job_name, created_at, pk);
    CREATE INDEX steps_ws_status_created ON steps (workspace, status, created_at, pk);
    CREATE INDEX steps_ws_status_updated ON steps (workspace, status, updated_at, pk);
    CREATE INDEX steps_ws_source_created ON steps (workspace, job_source, created_at, pk);
    CREATE INDEX steps_created ON steps (created_at, pk);
    CREATE INDEX steps_status_created ON steps (status, created_at, pk);
    CREATE INDEX steps_job ON steps (job_pk, idx);

    CREATE TABLE tasks (
        pk              INTEGER PRIMARY KEY,
        id              TEXT NOT NULL UNIQUE,
        step_pk         INTEGER NOT NULL REFERENCES steps (pk) ON DELETE CASCADE,
        name            TEXT NOT NULL,
        status          TEXT NOT NULL,
        status_details  TEXT NOT NULL DEFAULT '{}',
        error_details   TEXT,
        error_stack     TEXT,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        heartbeat_at    INTEGER,
        UNIQUE (step_pk, name)
    );

    CREATE TABLE log_lines (
        id          INTEGER PRIMARY KEY,
        job_pk      INTEGER NOT NULL REFERENCES jobs (pk) ON DELETE CASCADE,
        attempt_id  TEXT NOT NULL,
        step_name   TEXT NOT NULL,
        task_name   TEXT NOT NULL,
        stream      TEXT NOT NULL,
        ts          INTEGER NOT NULL,
        message     TEXT NOT NULL
    );
    -- Paging and tail both walk (job, id): cost depends on the page, not on the log's size.
    CREATE INDEX log_lines_job ON log_lines (job_pk, id);
    CREATE INDEX log_lines_job_step ON log_lines (job_pk, step_name, id);

    -- How far the daemon has read each task's output files, committed with the lines themselves,
    -- so a restarted daemon neither loses nor repeats a line.
    CREATE TABLE log_offsets (
        task_pk     INTEGER NOT NULL REFERENCES tasks (pk) ON DELETE CASCADE,
        stream      TEXT NOT NULL,
        offset      INTEGER NOT NULL,
        PRIMARY KEY (task_pk, stream)
    );
    """,
    # 2: secrets, results, per-task log accounting.
    """
    CREATE TABLE secrets (
        pk          INTEGER PRIMARY KEY,
        workspace   TEXT NOT NULL,
        name        TEXT NOT NULL,
        description TEXT,
        value       TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        UNIQUE (workspace, name)
    );

    CREATE TABLE results (
        pk                    INTEGER PRIMARY KEY,
        id                    TEXT NOT NULL UNIQUE,
        job_pk                INTEGER NOT NULL REFERENCES jobs (pk) ON DELETE CASCADE,
        name                  TEXT NOT NULL,
        artifact_url          TEXT NOT NULL,
        artifact_storage_type TEXT NOT NULL,
        created_at            INTEGER NOT NULL,
        updated_at            INTEGER NOT NULL,
        UNIQUE (job_pk, name)
    );

    -- Lines and bytes stored per task, kept with every append: `total` and the size limit
    -- never need to count a log line by line.
    CREATE TABLE log_stats (
        task_pk       INTEGER PRIMARY KEY REFERENCES tasks (pk) ON DELETE CASCADE,
        job_pk        INTEGER NOT NULL,
        attempt_id    TEXT NOT NULL,
        step_name     TEXT NOT NULL,
        task_name     TEXT NOT NULL,
        stored_lines  INTEGER NOT NULL DEFAULT 0,
        stored_bytes  INTEGER NOT NULL DEFAULT 0,
        dropped_lines INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX log_stats_job ON log_stats (job_pk);

    -- Finished steps whose task folders still wait for ttl_seconds_after_finished to pass.
    ALTER TABLE steps ADD COLUMN folders_removed INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX steps_folders_pending ON steps (updated_at)
        WHERE folders_removed = 0 AND status IN ('completed', 'error', 'cancelled');
    """,
    # 3: step counters kept by triggers, so List Steps' total_results never counts rows.
    """
    CREATE TABLE step_counts_ws (
        workspace TEXT NOT NULL,
        status    TEXT NOT NULL,
        source    TEXT NOT NULL,
        n         INTEGER NOT NULL,
        PRIMARY KEY (workspace, status, source)
    ) WITHOUT ROWID;
    CREATE TABLE step_counts_job (
        workspace TEXT NOT NULL,
        job_name  TEXT NOT NULL,
        status    TEXT NOT NULL,
        n         INTEGER NOT NULL,
        PRIMARY KEY (workspace, job_name, status)
    ) WITHOUT ROWID;

    INSERT INTO step_counts_ws SELECT workspace, status, job_source, COUNT(*) FROM steps
        GROUP BY workspace, status, job_source;
    INSERT INTO step_counts_job SELECT workspace, job_name, status, COUNT(*) FROM steps
        GROUP BY workspace, job_name, status;

    CREATE TRIGGER steps_count_insert AFTER INSERT ON steps BEGIN
        INSERT INTO step_counts_ws VALUES (new.workspace, new.status, new.job_source, 1)
            ON CONFLICT DO UPDATE SET n = n + 1;
        INSERT INTO step_counts_job VALUES (new.workspace, new.job_name, new.status, 1)
            ON CONFLICT DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER steps_count_status AFTER UPDATE OF status ON steps
        WHEN old.status != new.status BEGIN
        UPDATE step_counts_ws SET n = n - 1
            WHERE workspace = old.workspace AND status = old.status AND source = old.job_source;
        INSERT INTO step_counts_ws VALUES (new.workspace, new.status, new.job_source, 1)
            ON CONFLICT DO UPDATE SET n = n + 1;
        UPDATE step_counts_job SET n = n - 1
            WHERE workspace = old.workspace AND job_name = old.job_name AND status = old.status;
        INSERT INTO step_counts_job VALUES (new.workspace, new.job_name, new.status, 1)
            ON CONFLICT DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER steps_count_delete AFTER DELETE ON steps BEGIN
        UPDATE step_counts_ws SET n = n - 1
            WHERE workspace = old.workspace AND status = old.status AND source = old.job_source;
        UPDATE step_counts_job SET n = n - 1
            WHERE workspace = old.workspace AND job_name = old.job_name AND status = old.status;
    END;
    """,
    # 4: secret values are sealed (runner/secret_keys.py); NULL marks a value from before.
    """
    ALTER TABLE secrets ADD COLUMN key_id TEXT;
    """,
    # 5: job counters kept by triggers, so List Jobs' total_results never counts rows: a
    # COUNT(*) over the workspace's index made the first page 46x slower at 1,000,000 jobs.
    """
    CREATE TABLE job_counts (
        workspace TEXT NOT NULL,
        status    TEXT NOT NULL,
        n         INTEGER NOT NULL,
        PRIMARY KEY (workspace, status)
    ) WITHOUT ROWID;

    INSERT INTO job_counts SELECT workspace, status, COUNT(*) FROM jobs GROUP BY workspace, status;

    CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO job_counts VALUES (new.workspace, new.status, 1)
            ON CONFLICT DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER jobs_count_status AFTER UPDATE OF status ON jobs
        WHEN old.status != new.status BEGIN
        UPDATE job_counts SET n = n - 1 WHERE workspace = old.workspace AND status = old.status;
        INSERT INTO job_counts VALUES (new.workspace, new.status, 1)
            ON CONFLICT DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs BEGIN
        UPDATE job_counts SET n = n - 1 WHERE workspace = old.workspace AND status = old.status;
    END;
    """,
    # 6: output stored per chunk in one file per task (storage/log_files.py), indexed here, not a
    # row per line. Lines stored before stay readable: each becomes a chunk of its own, with its
    # bytes inline (`data`) and its id kept (a line id is chunk id << 20 | index, so a cursor of
    # before names the same line).
    """
    CREATE TABLE log_chunks (
        id          INTEGER PRIMARY KEY,
        job_pk      INTEGER NOT NULL REFERENCES jobs (pk) ON DELETE CASCADE,
        attempt_id  TEXT NOT NULL,
        step_name   TEXT NOT NULL,
        task_name   TEXT NOT NULL,
        task_pk     INTEGER,
        stream      TEXT NOT NULL,
        ts          INTEGER NOT NULL,
        lines       INTEGER NOT NULL,
        offset      INTEGER NOT NULL,
        length      INTEGER NOT NULL,
        data        BLOB
    );
    CREATE INDEX log_chunks_job ON log_chunks (job_pk, id);
    CREATE INDEX log_chunks_job_step ON log_chunks (job_pk, step_name, id);
    CREATE INDEX log_chunks_task ON log_chunks (task_pk, id) WHERE task_pk IS NOT NULL;

    INSERT INTO log_chunks (id, job_pk, attempt_id, step_name, task_name, task_pk, stream, ts,
                            lines, offset, length, data)
        SELECT id, job_pk, attempt_id, step_name, task_name, NULL, stream, ts, 1, 0,
               length(CAST(body AS BLOB)) + 1, CAST(body || char(10) AS BLOB)
        FROM (SELECT *, CASE WHEN stream = 'stderr' AND substr(message, 1, 9) = '[stderr] '
                             THEN substr(message, 10) ELSE message END AS body FROM log_lines);
    DROP TABLE log_lines;
    -- Their task, so the size limit of a task running across the upgrade counts and drops them.
    UPDATE log_chunks SET task_pk = (
        SELECT s.task_pk FROM log_stats s WHERE s.job_pk = log_chunks.job_pk
            AND s.attempt_id = log_chunks.attempt_id AND s.step_name = log_chunks.step_name
            AND s.task_name = log_chunks.task_name);

    ALTER TABLE log_stats ADD COLUMN file_end INTEGER NOT NULL DEFAULT 0;
    """,
]
