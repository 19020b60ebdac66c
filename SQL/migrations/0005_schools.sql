-- Schools (from the DfE GIAS register), their assignment to locality boards, and schools causing concern.
--
-- Since April 2023 GIAS gives "North Yorkshire" as the district of every North Yorkshire school, so the board
-- of a school comes from per-authority rules on one of several columns (district, ward, constituency,
-- postcode district), with per-URN overrides first; a school no rule matches stays unmapped and is reported.

CREATE TYPE school_board_source AS ENUM ('district', 'ward', 'constituency', 'postcode_district');

CREATE TABLE school_board_rule (
    authority_id  uuid NOT NULL,
    source        school_board_source NOT NULL,
    value         text NOT NULL CHECK (length(value) BETWEEN 1 AND 200),
    board_id      uuid NOT NULL,
    PRIMARY KEY (authority_id, source, value),
    FOREIGN KEY (authority_id, board_id) REFERENCES board (authority_id, id)
);
CREATE TABLE school_board_override (
    authority_id  uuid NOT NULL,
    urn           integer NOT NULL,
    board_id      uuid NOT NULL,
    PRIMARY KEY (authority_id, urn),
    FOREIGN KEY (authority_id, board_id) REFERENCES board (authority_id, id)
);

CREATE TABLE school (
    authority_id         uuid NOT NULL REFERENCES authority (id),
    urn                  integer NOT NULL CHECK (urn > 0),
    la_code              text NOT NULL,
    name                 text NOT NULL,
    establishment_type   text NOT NULL DEFAULT '',
    phase                text NOT NULL DEFAULT '',
    status               text NOT NULL DEFAULT '',     -- as GIAS says: Open, Closed, Open but proposed to close…
    is_open              boolean NOT NULL,
    open_date            date,
    close_date           date,
    district             text NOT NULL DEFAULT '',
    ward                 text NOT NULL DEFAULT '',
    constituency         text NOT NULL DEFAULT '',
    postcode             text NOT NULL DEFAULT '',
    board_id             uuid,                          -- null: no rule matched (reported by the import)
    source_sha256        bytea NOT NULL,                -- of the imported fields: a re-import that changes nothing writes nothing
    imported_at          timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    search               tsvector GENERATED ALWAYS AS (to_tsvector('simple', name)) STORED,
    PRIMARY KEY (authority_id, urn),
    FOREIGN KEY (authority_id, board_id) REFERENCES board (authority_id, id)
);
CREATE INDEX school_board ON school (authority_id, board_id, name);
CREATE INDEX school_search ON school USING gin (search);

-- Per-authority categories of concern (e.g. Ofsted inadequate, requires improvement, local concern).
CREATE TABLE concern_category (
    authority_id  uuid NOT NULL REFERENCES authority (id),
    code          text NOT NULL CHECK (code ~ '^[a-z][a-z0-9_]{1,40}$'),
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    PRIMARY KEY (authority_id, code)
);

CREATE TABLE school_concern (
    authority_id   uuid NOT NULL,
    id             uuid NOT NULL DEFAULT gen_random_uuid(),
    urn            integer NOT NULL,
    category       text NOT NULL,
    reason         text NOT NULL CHECK (length(reason) BETWEEN 1 AND 4000),
    since          date NOT NULL,
    cleared_on     date,
    clear_reason   text CHECK (length(clear_reason) <= 4000),
    recorded_by    text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, id),
    FOREIGN KEY (authority_id, urn) REFERENCES school (authority_id, urn),
    FOREIGN KEY (authority_id, category) REFERENCES concern_category (authority_id, code),
    CONSTRAINT school_concern_cleared_after CHECK (cleared_on IS NULL OR cleared_on >= since)
);
-- At most one open concern per school.
CREATE UNIQUE INDEX school_concern_open ON school_concern (authority_id, urn) WHERE cleared_on IS NULL;

-- A school's board, for policies: the board's staff see its concerns; other boards do not.
CREATE FUNCTION app_sees_school(p_authority uuid, p_urn integer) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT p_authority = app_authority_id() AND (app_sees_all_boards() OR EXISTS (
        SELECT 1 FROM school s WHERE s.authority_id = p_authority AND s.urn = p_urn AND s.board_id = ANY (app_board_ids())))
$$;

ALTER TABLE school ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
-- The register is public information: every member of staff of the authority reads it.
CREATE POLICY school_staff_read ON school FOR SELECT USING (authority_id = app_authority_id());
CREATE POLICY school_import ON school FOR ALL
    USING (authority_id = app_authority_id() AND app_has_role('authority_admin'))
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('authority_admin'));
ALTER TABLE school_board_rule ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY school_board_rule_read ON school_board_rule FOR SELECT USING (authority_id = app_authority_id());
CREATE POLICY school_board_rule_admin ON school_board_rule FOR ALL
    USING (authority_id = app_authority_id() AND app_has_role('authority_admin'))
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('authority_admin'));
ALTER TABLE school_board_override ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY school_board_override_read ON school_board_override FOR SELECT USING (authority_id = app_authority_id());
CREATE POLICY school_board_override_admin ON school_board_override FOR ALL
    USING (authority_id = app_authority_id() AND app_has_role('authority_admin'))
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('authority_admin'));
ALTER TABLE concern_category ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY concern_category_read ON concern_category FOR SELECT USING (authority_id = app_authority_id());
CREATE POLICY concern_category_admin ON concern_category FOR ALL
    USING (authority_id = app_authority_id() AND app_has_role('authority_admin'))
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('authority_admin'));
ALTER TABLE school_concern ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY school_concern_read ON school_concern FOR SELECT USING (app_sees_school(authority_id, urn));
CREATE POLICY school_concern_hosi ON school_concern FOR ALL
    USING (authority_id = app_authority_id() AND app_has_role('hosi'))
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('hosi'));

GRANT SELECT ON school, school_board_rule, school_board_override, concern_category TO locality_app;
GRANT SELECT, INSERT, UPDATE ON school_concern TO locality_app;
