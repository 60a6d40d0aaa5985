-- The audit store: current state, immutable hash-chained history, and embedding vectors.
-- Runs inside the configured schema (the connection's search_path puts it first; the `vector` type comes from the
-- extension, installed in the database beforehand by `datastorage migrate` or the DataStorage controller).

-- Current state of each RemediationAudit, keyed by the Kubernetes object's uid.
CREATE TABLE audits (
    id                     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cr_uid                 UUID        NOT NULL UNIQUE,
    namespace              TEXT        NOT NULL,
    name                   TEXT        NOT NULL,
    remediation_request_id TEXT        NOT NULL,
    alert_fingerprint      TEXT        NOT NULL,
    alert_name             TEXT,
    phase                  TEXT        NOT NULL,
    outcome                TEXT        NOT NULL,
    action_type            TEXT        NOT NULL,
    severity               TEXT        NOT NULL,
    environment            TEXT        NOT NULL,
    cluster_name           TEXT        NOT NULL,
    target_resource        TEXT        NOT NULL,
    start_time             TIMESTAMPTZ NOT NULL,
    end_time               TIMESTAMPTZ,
    duration_ms            BIGINT,
    error_message          TEXT,
    details                JSONB,
    generation             BIGINT      NOT NULL,
    content_hash           TEXT        NOT NULL,
    chain_hash             TEXT        NOT NULL,
    -- The text the embedding is computed from (semantic fields only) and its sha256, so the backfill can tell a
    -- stale vector from a current one.
    embedding_text         TEXT        NOT NULL,
    embedding_text_sha     TEXT        NOT NULL,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at             TIMESTAMPTZ,
    CONSTRAINT audits_remediation_request_id_key UNIQUE (remediation_request_id)
);

-- Keyset pagination: newest first, optionally within a namespace.
CREATE INDEX audits_start_time_id_idx ON audits (start_time DESC, id DESC);
CREATE INDEX audits_namespace_start_time_id_idx ON audits (namespace, start_time DESC, id DESC);

-- Audits are never deleted: removal of a RemediationAudit only sets deleted_at.
CREATE FUNCTION audits_forbid_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audits are never deleted (set deleted_at instead)' USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audits_no_delete BEFORE DELETE ON audits FOR EACH ROW EXECUTE FUNCTION audits_forbid_delete();

-- One immutable row per stored generation of an audit. `record` is the canonical JSON of the sanitized record;
-- content_hash = sha256(record); chain_hash = sha256(prev_chain_hash || content_hash) (prev is '' for the first
-- generation). Partitioned by month of recorded_at for retention.
CREATE TABLE audit_history (
    id              BIGINT GENERATED ALWAYS AS IDENTITY,
    audit_id        BIGINT      NOT NULL,
    cr_uid          UUID        NOT NULL,
    namespace       TEXT        NOT NULL,
    generation      BIGINT      NOT NULL,
    record          TEXT        NOT NULL,
    content_hash    TEXT        NOT NULL,
    prev_chain_hash TEXT        NOT NULL,
    chain_hash      TEXT        NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (id, recorded_at)
) PARTITION BY RANGE (recorded_at);

CREATE TABLE audit_history_default PARTITION OF audit_history DEFAULT;
CREATE INDEX audit_history_audit_generation_idx ON audit_history (audit_id, generation);

-- History is append-only, enforced by the database for every role that is not allowed to drop the table.
CREATE FUNCTION audit_history_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit history is immutable (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_history_immutable BEFORE UPDATE OR DELETE ON audit_history
    FOR EACH ROW EXECUTE FUNCTION audit_history_forbid_change();
CREATE TRIGGER audit_history_no_truncate BEFORE TRUNCATE ON audit_history
    FOR EACH STATEMENT EXECUTE FUNCTION audit_history_forbid_change();

-- Monthly partitions, created ahead of time; names are generated here from dates only.
CREATE FUNCTION ensure_history_partitions(months_ahead INT) RETURNS INT LANGUAGE plpgsql AS $$
DECLARE
    first_month DATE := date_trunc('month', now())::date;
    m DATE;
    created INT := 0;
    part TEXT;
BEGIN
    FOR i IN 0..GREATEST(months_ahead, 0) LOOP
        m := (first_month + make_interval(months => i))::date;
        part := 'audit_history_' || to_char(m, 'YYYY_MM');
        IF to_regclass(quote_ident(current_schema()) || '.' || quote_ident(part)) IS NULL THEN
            EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.audit_history FOR VALUES FROM (%L) TO (%L)',
                           current_schema(), part, current_schema(), m, (m + interval '1 month')::date);
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END;
$$;
SELECT ensure_history_partitions(3);

-- Verifies the hash chain of one audit from the stored records alone. A row whose record does not hash to its
-- content_hash, whose chain_hash is not sha256(prev || content), or whose prev does not equal the previous
-- generation's chain_hash is reported with ok = false.
CREATE FUNCTION verify_audit_chain(p_audit_id BIGINT)
RETURNS TABLE (generation BIGINT, ok BOOLEAN, problem TEXT) LANGUAGE sql STABLE AS $$
    WITH h AS (
        SELECT h.generation, h.record, h.content_hash, h.prev_chain_hash, h.chain_hash,
               lag(h.chain_hash, 1, '') OVER (ORDER BY h.generation, h.id) AS expected_prev
        FROM audit_history h
        WHERE h.audit_id = p_audit_id
    )
    SELECT generation,
           problem IS NULL,
           problem
    FROM (
        SELECT generation,
               CASE
                   WHEN encode(sha256(convert_to(record, 'UTF8')), 'hex') <> content_hash
                       THEN 'record does not match content_hash'
                   WHEN prev_chain_hash <> expected_prev
                       THEN 'prev_chain_hash does not match the previous generation'
                   WHEN encode(sha256(convert_to(prev_chain_hash || content_hash, 'UTF8')), 'hex') <> chain_hash
                       THEN 'chain_hash does not match prev_chain_hash and content_hash'
               END AS problem
        FROM h
    ) v
    ORDER BY generation;
$$;

-- Embedding vectors, one per audit, written with the row when ready in time or later by the backfill.
CREATE TABLE audit_embeddings (
    audit_id   BIGINT      PRIMARY KEY REFERENCES audits (id),
    namespace  TEXT        NOT NULL,
    model_id   TEXT        NOT NULL,
    text_sha   TEXT        NOT NULL,
    embedding  vector(384) NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX audit_embeddings_hnsw_idx ON audit_embeddings
    USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64);
CREATE INDEX audit_embeddings_namespace_idx ON audit_embeddings (namespace);
