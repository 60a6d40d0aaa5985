-- Retention drops whole monthly partitions of audit_history, so an audit's early generations can go while its later
-- ones stay. Its chain then starts at a generation whose prev_chain_hash names a generation no longer stored, which
-- is exactly what deleting generations by hand looks like: verification could not tell retention from tampering.
-- Retention now records, for every audit whose generations a dropped partition held (legal-hold namespaces keep
-- theirs and are not recorded), the last generation dropped and its chain hash, before it drops the partition.
-- Verification of a history whose first stored generation follows a recorded chain end starts the chain there and
-- says so ("verified from generation k; generations up to j purged by retention on …"); a gap that no retention
-- record explains still fails. What a database owner can still do with this table is in docs/security.md.

CREATE TABLE retention_purged (
    audit_id           BIGINT      NOT NULL,
    through_generation BIGINT      NOT NULL,
    chain_hash         TEXT        NOT NULL,
    partition          TEXT        NOT NULL,
    purged_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (audit_id, through_generation)
);
CREATE INDEX retention_purged_chain_idx ON retention_purged (audit_id, chain_hash);
CREATE TRIGGER retention_purged_immutable BEFORE UPDATE OR DELETE ON retention_purged
    FOR EACH ROW EXECUTE FUNCTION audit_history_forbid_change();
CREATE TRIGGER retention_purged_no_truncate BEFORE TRUNCATE ON retention_purged
    FOR EACH STATEMENT EXECUTE FUNCTION audit_history_forbid_change();

-- As in 0002, plus step (b): the chain end of every audit the partition held, before the partition goes; and one
-- run at a time.
CREATE OR REPLACE FUNCTION apply_retention(days INT, legal_hold TEXT[])
RETURNS TABLE (dropped TEXT, rows_held BIGINT) LANGUAGE plpgsql AS $$
DECLARE
    cutoff TIMESTAMPTZ := now() - make_interval(days => GREATEST(days, 1));
    part RECORD;
    upper_bound TIMESTAMPTZ;
    held BIGINT;
BEGIN
    -- One run at a time per schema (two replicas during a leader handover, or an operator's run and a manual one,
    -- would otherwise deadlock on DETACH PARTITION: seen in tests/it/chain.rs); the second waits, then finds
    -- nothing left to drop.
    PERFORM pg_advisory_xact_lock(hashtext('datastorage.apply_retention'), hashtext(current_schema()));
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
        -- (a) legal hold: the rows of held namespaces are kept.
        EXECUTE format(
            'INSERT INTO %I.audit_history_legal_hold (id, audit_id, cr_uid, namespace, generation, record,
                 content_hash, prev_chain_hash, chain_hash, recorded_at)
             SELECT id, audit_id, cr_uid, namespace, generation, record, content_hash, prev_chain_hash, chain_hash,
                 recorded_at
             FROM %I.%I WHERE namespace = ANY($1)
             ON CONFLICT DO NOTHING', current_schema(), current_schema(), part.name)
        USING legal_hold;
        GET DIAGNOSTICS held = ROW_COUNT;
        -- (b) the last generation dropped of every other audit, and its chain hash.
        EXECUTE format(
            'INSERT INTO %I.retention_purged (audit_id, through_generation, chain_hash, partition)
             SELECT DISTINCT ON (audit_id) audit_id, generation, chain_hash, %L
             FROM %I.%I WHERE NOT (namespace = ANY($1))
             ORDER BY audit_id, generation DESC, id DESC
             ON CONFLICT DO NOTHING', current_schema(), part.name, current_schema(), part.name)
        USING legal_hold;
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

-- CREATE OR REPLACE resets the function's settings: resolve names in this schema again (as 0003 does).
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION %I.apply_retention(integer, text[]) SET search_path = %I, pg_catalog, pg_temp',
                   current_schema(), current_schema());
END;
$$;
