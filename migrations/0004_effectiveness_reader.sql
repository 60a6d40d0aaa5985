-- A read-only view of the audit history for dashboards, and a NOLOGIN group role that may read it and nothing else.
-- The "Remediation effectiveness" Grafana dashboard (config/grafana/remediation-effectiveness-dashboard.json) runs
-- on Grafana's PostgreSQL datasource as a login role that is a member of this group; docs/operations.md says how a
-- DBA creates that login role. What the group can and cannot read is tested by tests/it/effectiveness_dashboard.rs.

-- 1. The columns the aggregates need, and only those. Left out on purpose: error_message, details and
--    embedding_text (free text written by remediators: sanitized, but it may still name hosts, users or internal
--    systems, and anyone who can edit a Grafana panel can run any SELECT the datasource's role may run), the
--    hashes, the uid, the CR name and the remediationRequestId. Rows with deleted_at set stay: the remediation
--    happened, and its RemediationAudit going away (e.g. crTtlAfterPersisted) must not change the statistics;
--    deleted_at is exposed so a query can still tell them apart. A plain view runs with its owner's privileges,
--    so the group needs SELECT on the view only, not on audits. A later migration that changes one of these
--    columns of audits has to drop and re-create this view (and repeat the GRANT of step 2).
CREATE VIEW audit_outcomes AS
    SELECT id, namespace, cluster_name, environment, severity, alert_name, alert_fingerprint, action_type,
           target_resource, phase, outcome, start_time, end_time, duration_ms, deleted_at
    FROM audits;

COMMENT ON VIEW audit_outcomes IS
    'Read-only projection of audits for dashboards (no free text, no hashes); rows with deleted_at set included.';

-- 2. The group role "<schema>_reader" (the schema name cut to 56 bytes so the role name fits in 63; schema names
--    are lowercase ASCII, validated by the operator). Roles belong to the whole PostgreSQL cluster, not to one
--    database: a store with the same schema name in another database of the same cluster grants to the same
--    role. Creating a role needs CREATEROLE (or superuser), which the operator's user may not have: then this
--    step only says so (NOTICE) and the migration still succeeds; a DBA creates the role and runs the GRANTs
--    below by hand (docs/operations.md). A role of that name that exists already (created by a DBA, or by the
--    migration of another database) is only granted to, never altered.
DO $$
DECLARE
    reader TEXT := left(current_schema(), 56) || '_reader';
    can_create BOOLEAN;
    created BOOLEAN := false;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = reader) THEN
        SELECT rolsuper OR rolcreaterole INTO can_create FROM pg_roles WHERE rolname = current_user;
        IF NOT coalesce(can_create, false) THEN
            RAISE NOTICE 'role % not created: % has neither CREATEROLE nor SUPERUSER (see docs/operations.md, '
                         '"Remediation effectiveness dashboard")', reader, current_user;
            RETURN;
        END IF;
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', reader);
            created := true;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- created meanwhile by a migration of another database of this cluster
        END;
    END IF;
    IF created THEN
        -- Effective only for sessions of this role itself (a NOLOGIN role has none unless a DBA makes it LOGIN);
        -- settings of a group are not inherited by its members, which set their own (docs/operations.md).
        EXECUTE format('ALTER ROLE %I SET search_path = %I', reader, current_schema());
        EXECUTE format('COMMENT ON ROLE %I IS %L', reader,
                       format('Read-only: SELECT on %I.audit_outcomes (datastorage dashboards)', current_schema()));
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', current_schema(), reader);
    EXECUTE format('GRANT SELECT ON %I.audit_outcomes TO %I', current_schema(), reader);
END;
$$;
