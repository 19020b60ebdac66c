-- Foundation: privileges of the application role and helpers later migrations share.
--
-- Roles (created by the embedded bootstrap, or by the operator; see deploy/README.md):
--   locality_owner  owns every object and runs migrations;
--   locality_app    the service's role: owns nothing, cannot bypass row-level security,
--                   and is granted only what it needs, table by table, in the migration that adds the table.

REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO locality_app;

-- Readiness checks compare the applied migrations with the build's.
GRANT SELECT ON schema_migrations TO locality_app;

-- Keeps updated_at honest without trusting callers to set it.
CREATE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;
