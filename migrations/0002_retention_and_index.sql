-- Retention with legal hold, and helpers for rebuilding the HNSW index without blocking writes.

-- Rows of legal-hold namespaces copied out of history partitions before retention drops them. Same shape and the
-- same immutability as audit_history.
CREATE TABLE audit_history_legal_hold (
    id              BIGINT      NOT NULL,
    audit_id        BIGINT      NOT NULL,
    cr_uid          UUID        NOT NULL,
    namespace       TEXT        NOT NULL,
    generation      BIGINT      NOT NULL,
    record          TEXT        NOT NULL,
    content_hash    TEXT        NOT NULL,
    prev_chain_hash TEXT        NOT NULL,
    chain_hash      TEXT        NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL,
    held_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (id, recorded_at)
);
CREATE INDEX audit_history_legal_hold_audit_idx ON audit_history_legal_hold (audit_id, generation);
CREATE TRIGGER audit_history_legal_hold_immutable BEFORE UPDATE OR DELETE ON audit_history_legal_hold
    FOR EACH ROW EXECUTE FUNCTION audit_history_forbid_change();

-- What retention did, for operators and auditors.
CREATE TABLE retention_runs (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    partition   TEXT        NOT NULL,
    cutoff      TIMESTAMPTZ NOT NULL,
    rows_held   BIGINT      NOT NULL,
    dropped_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Drops every monthly history partition whose whole range is older than `days`, after copying the rows of
-- `legal_hold` namespaces to audit_history_legal_hold. Partition names are read from the catalog and quoted
-- with %I. Returns the dropped partitions.
CREATE FUNCTION apply_retention(days INT, legal_hold TEXT[])
RETURNS TABLE (dropped TEXT, rows_held BIGINT) LANGUAGE plpgsql AS $$
DECLARE
    cutoff TIMESTAMPTZ := now() - make_interval(days => GREATEST(days, 1));
    part RECORD;
    upper_bound TIMESTAMPTZ;
    held BIGINT;
BEGIN
    FOR part IN
        SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        JOIN pg_namespace n ON n.oid = p.relnamespace
        WHERE p.relname = 'audit_history' AND n.nspname = current_schema()
          AND c.relname ~ '^audit_history_[0-9]{4}_[0-9]{2}$'
        ORDER BY c.relname
    LOOP
        upper_bound := substring(part.bound FROM 'TO \(''([^'']+)''\)')::timestamptz;
        CONTINUE WHEN upper_bound IS NULL OR upper_bound > cutoff;
        EXECUTE format(
            'INSERT INTO %I.audit_history_legal_hold (id, audit_id, cr_uid, namespace, generation, record,
                 content_hash, prev_chain_hash, chain_hash, recorded_at)
             SELECT id, audit_id, cr_uid, namespace, generation, record, content_hash, prev_chain_hash, chain_hash,
                 recorded_at
             FROM %I.%I WHERE namespace = ANY($1)
             ON CONFLICT DO NOTHING', current_schema(), current_schema(), part.name)
        USING legal_hold;
        GET DIAGNOSTICS held = ROW_COUNT;
        EXECUTE format('ALTER TABLE %I.audit_history DETACH PARTITION %I.%I',
                       current_schema(), current_schema(), part.name);
        EXECUTE format('DROP TABLE %I.%I', current_schema(), part.name);
        INSERT INTO retention_runs (partition, cutoff, rows_held) VALUES (part.name, cutoff, held);
        dropped := part.name;
        rows_held := held;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- History as verification sees it: live partitions plus rows kept under legal hold.
CREATE VIEW audit_history_all AS
    SELECT id, audit_id, cr_uid, namespace, generation, record, content_hash, prev_chain_hash, chain_hash, recorded_at
    FROM audit_history
    UNION ALL
    SELECT id, audit_id, cr_uid, namespace, generation, record, content_hash, prev_chain_hash, chain_hash, recorded_at
    FROM audit_history_legal_hold h
    WHERE NOT EXISTS (SELECT 1 FROM audit_history x WHERE x.id = h.id AND x.recorded_at = h.recorded_at);

CREATE OR REPLACE FUNCTION verify_audit_chain(p_audit_id BIGINT)
RETURNS TABLE (generation BIGINT, ok BOOLEAN, problem TEXT) LANGUAGE sql STABLE AS $$
    WITH h AS (
        SELECT h.generation, h.record, h.content_hash, h.prev_chain_hash, h.chain_hash,
               lag(h.chain_hash, 1, '') OVER (ORDER BY h.generation, h.id) AS expected_prev
        FROM audit_history_all h
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
