-- Public supplier registrations per client address, counted in the database so that every instance shares one
-- limit (kept in each process's memory, N instances gave N times the limit, a restart reset it, and spraying
-- 100,000 addresses emptied everyone's buckets). A fixed hourly window per address: simple, and enough to stop
-- scripted mass registration.
CREATE TABLE registration_attempt (
    client        text NOT NULL CHECK (length(client) BETWEEN 1 AND 100),  -- the client's IP address
    window_start  timestamptz NOT NULL,                                   -- the hour the attempts fall in
    attempts      integer NOT NULL CHECK (attempts > 0),
    PRIMARY KEY (client, window_start)
);
-- No tenant data: only the function below reads or writes it.
ALTER TABLE registration_attempt ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;

-- Counts an attempt by p_client and returns 0 when it is within p_per_hour, else the seconds until the window
-- ends (for Retry-After). Refused attempts count too, so hammering does not shorten the wait. Old windows are
-- deleted a few at a time as attempts arrive, so the table stays small without a job.
CREATE FUNCTION take_registration_slot(p_client text, p_per_hour integer) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_window timestamptz := date_trunc('hour', now());
    v_attempts integer;
BEGIN
    INSERT INTO registration_attempt AS r (client, window_start, attempts) VALUES (p_client, v_window, 1)
    ON CONFLICT (client, window_start) DO UPDATE SET attempts = r.attempts + 1
    RETURNING attempts INTO v_attempts;
    DELETE FROM registration_attempt
    WHERE ctid IN (SELECT ctid FROM registration_attempt WHERE window_start < v_window LIMIT 50);
    IF v_attempts > p_per_hour THEN
        RETURN greatest(1, ceil(extract(epoch FROM (v_window + interval '1 hour' - now())))::integer);
    END IF;
    RETURN 0;
END
$$;
REVOKE ALL ON FUNCTION take_registration_slot(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION take_registration_slot(text, integer) TO locality_app;
-- The application role has no privilege on the table at all; the function below, running as the owner (whom
-- FORCE subjects to policies too), is the one way in, and this policy lets it.
CREATE POLICY registration_attempt_through_function ON registration_attempt USING (true) WITH CHECK (true);
