-- Idempotency keys for POST requests (Stripe semantics, DESIGN.md §5).
--
-- The first request with a key claims it (a row with status NULL) in a short transaction of its own, runs,
-- and then stores its answer (a 2xx or a final 4xx) or, on a 5xx, deletes the row so that a retry runs
-- again. A repeat with the same key and the same request (hash of method, path and body) replays the
-- stored answer; another request under that key is refused; while the first still runs, a repeat is told
-- so. Kept here rather than in process memory so that it holds across instances and restarts.
--
-- Keys are scoped to the caller: 'user:<uuid>' for an authenticated user (staff or supplier). The caller
-- is stated per transaction in app.idempotency_caller, and row-level security (forced) shows each caller
-- only its own keys, as the tenant tables do with app.authority_id.

CREATE FUNCTION app_idempotency_caller() RETURNS text
LANGUAGE sql STABLE AS $$ SELECT nullif(current_setting('app.idempotency_caller', true), '') $$;

CREATE TABLE idempotency_key (
    caller            text NOT NULL CHECK (length(caller) BETWEEN 1 AND 200),
    key               text NOT NULL CHECK (key ~ '^[!-~]{1,255}$'),
    request_hash      bytea NOT NULL CHECK (length(request_hash) = 32),   -- SHA-256 of method, path and body
    -- NULL while the first request runs; then the status of its stored answer (5xx answers are never kept).
    status            integer CHECK (status BETWEEN 200 AND 499),
    response_headers  jsonb NOT NULL DEFAULT '{}',
    response_body     bytea NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL DEFAULT now() + interval '24 hours',
    PRIMARY KEY (caller, key),
    CONSTRAINT idempotency_key_answer_complete CHECK (status IS NOT NULL OR (response_headers = '{}' AND response_body = ''))
);
COMMENT ON TABLE idempotency_key IS 'Answers to POST requests sent with an Idempotency-Key, per caller, for 24 hours.';
CREATE INDEX idempotency_key_expiry ON idempotency_key (expires_at);

ALTER TABLE idempotency_key ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY idempotency_key_own ON idempotency_key
    USING (caller = app_idempotency_caller()) WITH CHECK (caller = app_idempotency_caller());
-- Expired keys of any caller may be removed by the purge function below (which runs as the owner).
CREATE POLICY idempotency_key_purge_read ON idempotency_key FOR SELECT
    USING (current_user = 'locality_owner' AND expires_at <= now());
CREATE POLICY idempotency_key_purge ON idempotency_key FOR DELETE
    USING (current_user = 'locality_owner' AND expires_at <= now());

-- Removes up to p_limit expired keys of every caller; the service calls it now and then, so the table does
-- not grow without bound while no caller reuses its old keys. Returns how many it removed.
CREATE FUNCTION purge_expired_idempotency_keys(p_limit integer) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_removed integer;
BEGIN
    DELETE FROM idempotency_key k
    USING (SELECT caller, key FROM idempotency_key WHERE expires_at <= now() LIMIT greatest(p_limit, 0)) e
    WHERE k.caller = e.caller AND k.key = e.key AND k.expires_at <= now();
    GET DIAGNOSTICS v_removed = ROW_COUNT;
    RETURN v_removed;
END;
$$;
REVOKE ALL ON FUNCTION purge_expired_idempotency_keys(integer) FROM PUBLIC;

GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_key TO locality_app;
GRANT EXECUTE ON FUNCTION purge_expired_idempotency_keys(integer) TO locality_app;
