-- Tenancy: authorities (tenants), locality boards, funding streams, users, roles and API tokens,
-- the budget ledger with its maintained balances, and the hash-chained audit log.
--
-- Every table carrying a tenant (authority_id) has row-level security, forced, so that even the owner
-- role is filtered. Each transaction states its context with set_config('app.…', …, true):
--   app.authority_id  the tenant (staff)      app.supplier_id  the supplier organisation (supplier users)
--   app.user_id       the acting user         app.roles        comma-separated roles
--   app.board_ids     {uuid,…} boards the user is scoped to
--   app.actor         'user:<id>' or 'cli:<os user>', for audit      app.request_id
-- With no context, current_setting(…, true) is NULL and no policy matches: nothing is visible or writable.

-- Context accessors. STABLE so the planner evaluates them once per statement.
CREATE FUNCTION app_authority_id() RETURNS uuid
LANGUAGE sql STABLE AS $$ SELECT nullif(current_setting('app.authority_id', true), '')::uuid $$;

CREATE FUNCTION app_supplier_id() RETURNS uuid
LANGUAGE sql STABLE AS $$ SELECT nullif(current_setting('app.supplier_id', true), '')::uuid $$;

CREATE FUNCTION app_user_id() RETURNS uuid
LANGUAGE sql STABLE AS $$ SELECT nullif(current_setting('app.user_id', true), '')::uuid $$;

CREATE FUNCTION app_has_role(role text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(role = ANY (string_to_array(current_setting('app.roles', true), ',')), false)
$$;

CREATE FUNCTION app_board_ids() RETURNS uuid[]
LANGUAGE sql STABLE AS $$ SELECT coalesce(nullif(current_setting('app.board_ids', true), '')::uuid[], '{}') $$;

-- Roles that see every board of their authority; others see only the boards they are scoped to.
CREATE FUNCTION app_sees_all_boards() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT app_has_role('authority_admin') OR app_has_role('hosi') OR app_has_role('auditor')
$$;

-- Authentication runs before any tenant context exists. Only the SECURITY DEFINER functions below, which
-- run as the owner, may then read tokens, users and roles across tenants; the application role never can.
CREATE FUNCTION app_is_authenticating() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT current_user = 'locality_owner' AND app_authority_id() IS NULL AND app_supplier_id() IS NULL
$$;

-- Rows that must never change once written (ledger, audit).
CREATE FUNCTION forbid_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- Authorities ----------------------------------------------------------------------------------------

CREATE TABLE authority (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug                    text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    name                    text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at              timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE authority IS 'A council: the tenant. Created by the platform operator (CLI).';
ALTER TABLE authority ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY authority_own ON authority USING (id = app_authority_id()) WITH CHECK (id = app_authority_id());
-- The platform operator (the CLI, connected as the owner) lists every authority to pick one.
CREATE POLICY authority_operator_read ON authority FOR SELECT USING (current_user = 'locality_owner');

-- Boards ---------------------------------------------------------------------------------------------

CREATE TABLE board (
    authority_id  uuid NOT NULL REFERENCES authority (id),
    id            uuid NOT NULL DEFAULT gen_random_uuid(),
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    short_code    text NOT NULL CHECK (short_code ~ '^[A-Z0-9]{2,10}$'),
    area          text NOT NULL DEFAULT '' CHECK (length(area) <= 500),   -- the districts it covers
    chair         text NOT NULL DEFAULT '' CHECK (length(chair) <= 200),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, id),
    CONSTRAINT board_name_unique UNIQUE (authority_id, name),
    CONSTRAINT board_short_code_unique UNIQUE (authority_id, short_code)
);
COMMENT ON TABLE board IS 'A locality board; keys carry the tenant so foreign keys cannot reach another authority.';
CREATE TRIGGER board_updated_at BEFORE UPDATE ON board FOR EACH ROW EXECUTE FUNCTION set_updated_at();
ALTER TABLE board ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY board_read ON board FOR SELECT
    USING (authority_id = app_authority_id() AND (app_sees_all_boards() OR id = ANY (app_board_ids())));
CREATE POLICY board_admin_insert ON board FOR INSERT
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('authority_admin'));
CREATE POLICY board_admin_update ON board FOR UPDATE
    USING (authority_id = app_authority_id() AND app_has_role('authority_admin'))
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('authority_admin'));

-- Funding streams ------------------------------------------------------------------------------------

CREATE TABLE funding_stream (
    authority_id  uuid NOT NULL REFERENCES authority (id),
    id            uuid NOT NULL DEFAULT gen_random_uuid(),
    code          text NOT NULL CHECK (code ~ '^[a-z][a-z0-9_]{1,40}$'),
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    PRIMARY KEY (authority_id, id),
    CONSTRAINT funding_stream_code_unique UNIQUE (authority_id, code)
);
ALTER TABLE funding_stream ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY funding_stream_read ON funding_stream FOR SELECT USING (authority_id = app_authority_id());
CREATE POLICY funding_stream_admin_insert ON funding_stream FOR INSERT
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('authority_admin'));

-- Supplier organisations -----------------------------------------------------------------------------

-- Global, not a tenant: one organisation may work for several authorities, each admitting it separately
-- (admission arrives with the marketplace). Its users see it; authority staff see it once admission exists.
CREATE TABLE supplier (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at    timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE supplier ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY supplier_own ON supplier FOR SELECT USING (id = app_supplier_id());
CREATE POLICY supplier_operator ON supplier FOR ALL
    USING (current_user = 'locality_owner') WITH CHECK (current_user = 'locality_owner');

-- Users, roles and tokens ----------------------------------------------------------------------------

CREATE TYPE user_role AS ENUM ('authority_admin', 'hosi', 'lim', 'board_member', 'supplier_user', 'auditor');

-- A user belongs to exactly one authority (staff) or one supplier organisation (supplier users).
CREATE TABLE app_user (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    authority_id  uuid REFERENCES authority (id),
    supplier_id   uuid REFERENCES supplier (id),
    email         text NOT NULL CHECK (email ~ '^[^@\s]+@[^@\s]+\.[^@\s]+$' AND length(email) <= 254),
    display_name  text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    disabled_at   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT app_user_one_home CHECK ((authority_id IS NULL) <> (supplier_id IS NULL)),
    CONSTRAINT app_user_authority_key UNIQUE (authority_id, id),
    CONSTRAINT app_user_supplier_key UNIQUE (supplier_id, id)
);
CREATE UNIQUE INDEX app_user_staff_email ON app_user (authority_id, lower(email)) WHERE authority_id IS NOT NULL;
CREATE UNIQUE INDEX app_user_supplier_email ON app_user (lower(email)) WHERE supplier_id IS NOT NULL;
COMMENT ON TABLE app_user IS 'People: staff of one authority, or users of one supplier organisation.';
CREATE TRIGGER app_user_updated_at BEFORE UPDATE ON app_user FOR EACH ROW EXECUTE FUNCTION set_updated_at();
ALTER TABLE app_user ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY app_user_staff_read ON app_user FOR SELECT
    USING (authority_id = app_authority_id()
           AND (app_has_role('authority_admin') OR app_has_role('auditor') OR id = app_user_id()));
CREATE POLICY app_user_supplier_read ON app_user FOR SELECT USING (supplier_id = app_supplier_id());
CREATE POLICY app_user_authentication ON app_user FOR SELECT USING (app_is_authenticating());
CREATE POLICY app_user_admin_insert ON app_user FOR INSERT
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('authority_admin'));
CREATE POLICY app_user_admin_update ON app_user FOR UPDATE
    USING (authority_id = app_authority_id() AND app_has_role('authority_admin'))
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('authority_admin'));
CREATE POLICY app_user_operator_supplier ON app_user FOR ALL
    USING (supplier_id IS NOT NULL AND current_user = 'locality_owner')
    WITH CHECK (supplier_id IS NOT NULL AND current_user = 'locality_owner');

CREATE TABLE role_assignment (
    authority_id  uuid NOT NULL,
    id            uuid NOT NULL DEFAULT gen_random_uuid(),
    user_id       uuid NOT NULL,
    role          user_role NOT NULL,
    board_id      uuid,   -- required for lim and board_member; null for authority-wide roles
    PRIMARY KEY (authority_id, id),
    FOREIGN KEY (authority_id, user_id) REFERENCES app_user (authority_id, id),
    FOREIGN KEY (authority_id, board_id) REFERENCES board (authority_id, id),
    CONSTRAINT role_assignment_scope CHECK (
        (role IN ('lim', 'board_member')) = (board_id IS NOT NULL) AND role <> 'supplier_user')
);
CREATE UNIQUE INDEX role_assignment_unique
    ON role_assignment (authority_id, user_id, role, coalesce(board_id, '00000000-0000-0000-0000-000000000000'));
-- A board member sits on one board.
CREATE UNIQUE INDEX role_assignment_one_board_member
    ON role_assignment (authority_id, user_id) WHERE role = 'board_member';
ALTER TABLE role_assignment ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY role_assignment_read ON role_assignment FOR SELECT
    USING (authority_id = app_authority_id()
           AND (app_has_role('authority_admin') OR app_has_role('auditor') OR user_id = app_user_id()));
CREATE POLICY role_assignment_authentication ON role_assignment FOR SELECT USING (app_is_authenticating());
CREATE POLICY role_assignment_admin_write ON role_assignment FOR ALL
    USING (authority_id = app_authority_id() AND app_has_role('authority_admin'))
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('authority_admin'));

-- The token's home (authority or supplier) is the user's; the composite keys make that so.
CREATE TABLE api_token (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    authority_id  uuid,
    supplier_id   uuid,
    user_id       uuid NOT NULL REFERENCES app_user (id),
    prefix        text NOT NULL UNIQUE CHECK (prefix ~ '^lcm_[0-9a-f]{12}$'),   -- the visible part, used to find the token
    token_hash    bytea NOT NULL CHECK (length(token_hash) = 32),   -- SHA-256 of the whole token; the token itself is never stored
    label         text NOT NULL DEFAULT '' CHECK (length(label) <= 200),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    CONSTRAINT api_token_one_home CHECK ((authority_id IS NULL) <> (supplier_id IS NULL)),
    FOREIGN KEY (authority_id, user_id) REFERENCES app_user (authority_id, id),
    FOREIGN KEY (supplier_id, user_id) REFERENCES app_user (supplier_id, id)
);
CREATE INDEX api_token_user ON api_token (user_id);
ALTER TABLE api_token ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY api_token_admin ON api_token FOR ALL
    USING (authority_id = app_authority_id() AND app_has_role('authority_admin'))
    WITH CHECK (authority_id = app_authority_id() AND app_has_role('authority_admin'));
CREATE POLICY api_token_auditor_read ON api_token FOR SELECT
    USING (authority_id = app_authority_id() AND app_has_role('auditor'));
CREATE POLICY api_token_authentication ON api_token FOR ALL
    USING (app_is_authenticating()) WITH CHECK (app_is_authenticating());
CREATE POLICY api_token_operator_supplier ON api_token FOR ALL
    USING (supplier_id IS NOT NULL AND current_user = 'locality_owner')
    WITH CHECK (supplier_id IS NOT NULL AND current_user = 'locality_owner');

-- Finds a live token by its visible prefix; the service compares the hash in constant time.
-- Unknown, expired and revoked tokens and disabled users return no row.
CREATE FUNCTION find_api_token(p_prefix text)
RETURNS TABLE (token_id uuid, token_hash bytea, authority_id uuid, supplier_id uuid, user_id uuid,
               display_name text, email text, roles text[], board_ids uuid[], last_used_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT t.id, t.token_hash, t.authority_id, t.supplier_id, t.user_id, u.display_name, u.email,
           CASE WHEN t.supplier_id IS NOT NULL THEN ARRAY['supplier_user']
                ELSE coalesce(array_agg(DISTINCT r.role::text) FILTER (WHERE r.role IS NOT NULL), '{}') END,
           coalesce(array_agg(DISTINCT r.board_id) FILTER (WHERE r.board_id IS NOT NULL), '{}'),
           t.last_used_at
    FROM api_token t
    JOIN app_user u ON u.id = t.user_id
    LEFT JOIN role_assignment r ON r.authority_id = t.authority_id AND r.user_id = t.user_id
    WHERE t.prefix = p_prefix AND t.revoked_at IS NULL AND t.expires_at > now() AND u.disabled_at IS NULL
    GROUP BY t.id, u.id
$$;

-- Records use at most once a minute, so that reads do not each turn into a write.
CREATE FUNCTION touch_api_token(p_token_id uuid) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public AS $$
    UPDATE api_token SET last_used_at = now()
    WHERE id = p_token_id AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
$$;

-- Budget ledger --------------------------------------------------------------------------------------

CREATE TYPE ledger_entry_kind AS ENUM ('allocation', 'earmark', 'release', 'commitment', 'spend');

CREATE TABLE budget_ledger (
    authority_id       uuid NOT NULL,
    id                 uuid NOT NULL DEFAULT gen_random_uuid(),
    seq                bigint GENERATED ALWAYS AS IDENTITY,   -- stable listing order
    board_id           uuid NOT NULL,
    financial_year     text NOT NULL CHECK (financial_year ~ '^[0-9]{4}-[0-9]{2}$'
                           AND (left(financial_year, 4)::int + 1) % 100 = right(financial_year, 2)::int),
    funding_stream_id  uuid NOT NULL,
    kind               ledger_entry_kind NOT NULL,
    amount_pence       bigint NOT NULL CHECK (amount_pence > 0),
    reference          text NOT NULL DEFAULT '' CHECK (length(reference) <= 200),   -- e.g. project:<id>
    actor              text NOT NULL,
    reason             text NOT NULL CHECK (length(reason) BETWEEN 1 AND 1000),
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (authority_id, id),
    FOREIGN KEY (authority_id, board_id) REFERENCES board (authority_id, id),
    FOREIGN KEY (authority_id, funding_stream_id) REFERENCES funding_stream (authority_id, id)
);
COMMENT ON TABLE budget_ledger IS 'Append-only money movements in pence. Balances are derived from it by trigger.';
CREATE INDEX budget_ledger_envelope ON budget_ledger (authority_id, board_id, financial_year, seq);
CREATE TRIGGER budget_ledger_append_only BEFORE UPDATE OR DELETE ON budget_ledger
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
ALTER TABLE budget_ledger ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY budget_ledger_read ON budget_ledger FOR SELECT
    USING (authority_id = app_authority_id() AND (app_sees_all_boards() OR board_id = ANY (app_board_ids())));
CREATE POLICY budget_ledger_insert ON budget_ledger FOR INSERT
    WITH CHECK (authority_id = app_authority_id()
                AND (app_has_role('authority_admin') OR (app_has_role('lim') AND board_id = ANY (app_board_ids())))
                AND actor = current_setting('app.actor', true));

-- One row per board x financial year x funding stream, kept by the ledger trigger only (the application
-- role cannot write it), so it cannot drift from the ledger. The CHECKs are the money rules: a ledger
-- entry that would break them fails, under any concurrency, because the row is locked while updated.
CREATE TABLE budget_balance (
    authority_id       uuid NOT NULL,
    board_id           uuid NOT NULL,
    financial_year     text NOT NULL,
    funding_stream_id  uuid NOT NULL,
    allocated_pence    bigint NOT NULL DEFAULT 0,
    earmarked_pence    bigint NOT NULL DEFAULT 0,   -- held for published projects
    committed_pence    bigint NOT NULL DEFAULT 0,   -- awarded contracts
    spent_pence        bigint NOT NULL DEFAULT 0,   -- paid against commitments
    PRIMARY KEY (authority_id, board_id, financial_year, funding_stream_id),
    FOREIGN KEY (authority_id, board_id) REFERENCES board (authority_id, id),
    FOREIGN KEY (authority_id, funding_stream_id) REFERENCES funding_stream (authority_id, id),
    CONSTRAINT budget_available_not_negative CHECK (allocated_pence - earmarked_pence - committed_pence >= 0),
    CONSTRAINT budget_earmarked_not_negative CHECK (earmarked_pence >= 0),
    CONSTRAINT budget_spent_within_committed CHECK (spent_pence <= committed_pence)
);
ALTER TABLE budget_balance ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY budget_balance_read ON budget_balance FOR SELECT
    USING (authority_id = app_authority_id() AND (app_sees_all_boards() OR board_id = ANY (app_board_ids())));
CREATE POLICY budget_balance_maintain ON budget_balance FOR ALL
    USING (authority_id = app_authority_id() AND current_user = 'locality_owner')
    WITH CHECK (authority_id = app_authority_id() AND current_user = 'locality_owner');

-- The envelope row is created empty, then updated: CHECK constraints are tested on the updated row, under
-- its row lock, so racing entries are applied one at a time and each sees the others' effect. (An upsert
-- would test the CHECKs on the proposed insert row, which for an earmark alone always fails.)
CREATE FUNCTION apply_ledger_entry() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
    INSERT INTO budget_balance (authority_id, board_id, financial_year, funding_stream_id)
    VALUES (NEW.authority_id, NEW.board_id, NEW.financial_year, NEW.funding_stream_id)
    ON CONFLICT (authority_id, board_id, financial_year, funding_stream_id) DO NOTHING;
    UPDATE budget_balance SET
        allocated_pence = allocated_pence + CASE WHEN NEW.kind = 'allocation' THEN NEW.amount_pence ELSE 0 END,
        earmarked_pence = earmarked_pence
            + CASE NEW.kind WHEN 'earmark' THEN NEW.amount_pence WHEN 'release' THEN -NEW.amount_pence ELSE 0 END,
        committed_pence = committed_pence + CASE WHEN NEW.kind = 'commitment' THEN NEW.amount_pence ELSE 0 END,
        spent_pence     = spent_pence + CASE WHEN NEW.kind = 'spend' THEN NEW.amount_pence ELSE 0 END
    WHERE authority_id = NEW.authority_id AND board_id = NEW.board_id AND financial_year = NEW.financial_year
      AND funding_stream_id = NEW.funding_stream_id;
    RETURN NEW;
END;
$$;
CREATE TRIGGER budget_ledger_apply AFTER INSERT ON budget_ledger FOR EACH ROW EXECUTE FUNCTION apply_ledger_entry();

-- Audit ----------------------------------------------------------------------------------------------

-- One hash chain per authority, and one per supplier organisation for changes made in a supplier's own
-- context: chain_id is that authority's or supplier's id.
CREATE TABLE audit_event (
    chain_id      uuid NOT NULL,
    seq           bigint NOT NULL,              -- 1, 2, 3… per chain: the chain order
    authority_id  uuid REFERENCES authority (id),
    supplier_id   uuid REFERENCES supplier (id),
    id            uuid NOT NULL DEFAULT gen_random_uuid(),
    occurred_at   timestamptz NOT NULL,
    actor         text NOT NULL,                -- user:<uuid> or cli:<os user>
    action        text NOT NULL,                -- e.g. board.create
    entity_type   text NOT NULL,
    entity_id     text NOT NULL,
    before        jsonb,
    after         jsonb,
    request_id    text,
    prev_hash     bytea NOT NULL,               -- the previous event's hash (32 zero bytes for the first)
    hash          bytea NOT NULL,               -- sha256(prev_hash || audit_canonical(event))
    PRIMARY KEY (chain_id, seq),
    CONSTRAINT audit_event_id_unique UNIQUE (id),
    CONSTRAINT audit_event_chain CHECK (chain_id = coalesce(authority_id, supplier_id)
                                        AND (authority_id IS NULL) <> (supplier_id IS NULL))
);
CREATE INDEX audit_event_entity ON audit_event (chain_id, entity_type, entity_id);
CREATE INDEX audit_event_time ON audit_event (chain_id, occurred_at);
CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_event
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
ALTER TABLE audit_event ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_event_read ON audit_event FOR SELECT
    USING (authority_id = app_authority_id() AND (app_has_role('authority_admin') OR app_has_role('auditor')));
CREATE POLICY audit_event_append ON audit_event FOR INSERT
    WITH CHECK (current_user = 'locality_owner'
                AND (authority_id = app_authority_id() OR supplier_id = app_supplier_id()));
-- The operator's verifier reads every chain.
CREATE POLICY audit_event_operator_read ON audit_event FOR SELECT USING (current_user = 'locality_owner');

-- The chain head: its row lock serialises appenders, so concurrent writers cannot fork the chain.
CREATE TABLE audit_chain_head (
    chain_id      uuid PRIMARY KEY,
    seq           bigint NOT NULL,
    hash          bytea NOT NULL
);
ALTER TABLE audit_chain_head ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_chain_head_owner ON audit_chain_head FOR ALL
    USING (current_user = 'locality_owner') WITH CHECK (current_user = 'locality_owner');

-- The canonical text hashed for an event: jsonb's text form is deterministic (sorted keys, fixed spacing).
CREATE FUNCTION audit_canonical(e audit_event) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'chain_id', e.chain_id, 'seq', e.seq, 'authority_id', e.authority_id, 'supplier_id', e.supplier_id,
        'id', e.id, 'occurred_at', to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'actor', e.actor, 'action', e.action, 'entity_type', e.entity_type, 'entity_id', e.entity_id,
        'before', e.before, 'after', e.after, 'request_id', e.request_id)::text
$$;

-- Appends one event for the current context's authority (or supplier), actor and request; called in the
-- same transaction as the change it records, so a failed audit write fails the change.
CREATE FUNCTION append_audit_event(p_action text, p_entity_type text, p_entity_id text, p_before jsonb, p_after jsonb)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public AS $$
DECLARE
    v_authority uuid := app_authority_id();
    v_supplier uuid := CASE WHEN app_authority_id() IS NULL THEN app_supplier_id() END;
    v_chain uuid := coalesce(app_authority_id(), app_supplier_id());
    v_actor text := nullif(current_setting('app.actor', true), '');
    v_prev_seq bigint;
    v_prev_hash bytea;
    v_event audit_event;
BEGIN
    IF v_chain IS NULL OR v_actor IS NULL THEN
        RAISE EXCEPTION 'audit event without authority or actor context' USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO audit_chain_head (chain_id, seq, hash) VALUES (v_chain, 0, '\x0000000000000000000000000000000000000000000000000000000000000000')
    ON CONFLICT (chain_id) DO NOTHING;
    SELECT seq, hash INTO v_prev_seq, v_prev_hash FROM audit_chain_head WHERE chain_id = v_chain FOR UPDATE;
    v_event := ROW(v_chain, v_prev_seq + 1, v_authority, v_supplier, gen_random_uuid(), clock_timestamp(), v_actor,
                   p_action, p_entity_type, p_entity_id, p_before, p_after,
                   nullif(current_setting('app.request_id', true), ''), v_prev_hash, NULL);
    v_event.hash := sha256(v_prev_hash || convert_to(audit_canonical(v_event), 'UTF8'));
    INSERT INTO audit_event SELECT v_event.*;
    UPDATE audit_chain_head SET seq = v_event.seq, hash = v_event.hash WHERE chain_id = v_chain;
    RETURN v_event.seq;
END;
$$;

-- Grants: the application role gets exactly what the service does, nothing more ------------------

GRANT SELECT ON authority, supplier, board, funding_stream, app_user, role_assignment, budget_balance, budget_ledger,
    audit_event TO locality_app;
GRANT INSERT, UPDATE ON board, app_user TO locality_app;
GRANT INSERT ON funding_stream, budget_ledger TO locality_app;
GRANT INSERT, DELETE ON role_assignment TO locality_app;
GRANT SELECT, INSERT, UPDATE ON api_token TO locality_app;
REVOKE ALL ON FUNCTION find_api_token(text), touch_api_token(uuid), append_audit_event(text, text, text, jsonb, jsonb),
    apply_ledger_entry() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION find_api_token(text), touch_api_token(uuid), append_audit_event(text, text, text, jsonb, jsonb)
    TO locality_app;
