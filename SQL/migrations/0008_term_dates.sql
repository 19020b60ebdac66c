-- Term dates per authority and academic year (September to August): termly reporting periods follow them.
-- Without a row for a year, standard dates apply (autumn to 31 December, spring to 14 April, summer to 31 August).
CREATE TABLE term_dates (
    authority_id   uuid NOT NULL REFERENCES authority (id),
    academic_year  integer NOT NULL CHECK (academic_year BETWEEN 2000 AND 2100),   -- 2026 for 2026-27
    term           text NOT NULL CHECK (term IN ('autumn', 'spring', 'summer')),
    starts         date NOT NULL,
    ends           date NOT NULL CHECK (ends >= starts),
    PRIMARY KEY (authority_id, academic_year, term)
);
ALTER TABLE term_dates ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY term_dates_read ON term_dates FOR SELECT USING (authority_id = app_authority_id());
CREATE POLICY term_dates_admin ON term_dates FOR ALL
    USING (authority_id = app_authority_id() AND app_has_role('authority_admin'))
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('authority_admin'));
GRANT SELECT ON term_dates TO locality_app;
