-- Audit events without a queue (issue 14).
--
-- Until now append_audit_event locked the chain's head row (one per authority, one per supplier organisation)
-- and held it until the writing transaction ended, so every audited write of an authority (or of a supplier:
-- every bid it submits, on any project) waited for the one before it to commit. Now an event is written at
-- once, unsealed, and chained afterwards by a sealer:
--
--   append   inserts the event with a provisional negative seq (from a sequence: unique, in append order) and
--            no hashes, then seals what it can without waiting: the head row is taken FOR UPDATE SKIP LOCKED,
--            so when another transaction is sealing the chain it moves on and leaves its event to the next
--            sealer. Nothing an appender does waits for another appender.
--   seal     under the head's row lock, takes the chain's unsealed events it can see (committed ones, and the
--            sealing transaction's own) in append order and gives each the next seq, the previous hash and its
--            own hash, exactly as before (sha256(prev_hash || audit_canonical(event))). An event committed
--            after a seal began is sealed by the next one, so the chain is in the order events became visible.
--   readers  the audit list (the authority's own chain) and the operator's verifier seal first, waiting for
--            the head, so they see every committed event in the chain; an unsealed event is never shown.
--
-- Sequential writes are sealed by their own append, as before; concurrent ones by whichever writer, list or
-- verify comes next. The chain stays one line per authority (or supplier) with seq 1, 2, 3…, and verification
-- is unchanged: an edited, deleted or reordered sealed event still breaks it. What changes is the window in
-- which an event is not yet chained: until the next audited write, list or verify of its chain. (The owner,
-- who alone could touch an unsealed event, could as well recompute a whole chain; the chain detects partial
-- tampering, now as before.) One wait remains: while a chain's first event is uncommitted, a second appender
-- creating the same head row waits for it (once per authority or supplier, ever).
--
-- Written to work under an empty search_path (names of ours schema-qualified), like 0019.

CREATE SEQUENCE public.audit_pending_seq;

-- An event is unsealed (seq < 0, no hashes) or sealed (seq > 0, both hashes), nothing in between.
ALTER TABLE public.audit_event
    ALTER COLUMN prev_hash DROP NOT NULL,
    ALTER COLUMN hash DROP NOT NULL,
    ADD CONSTRAINT audit_event_sealed CHECK (
        CASE WHEN seq > 0 THEN prev_hash IS NOT NULL AND hash IS NOT NULL
             ELSE seq < 0 AND prev_hash IS NULL AND hash IS NULL END);
CREATE INDEX audit_event_unsealed ON public.audit_event (chain_id, seq DESC) WHERE hash IS NULL;

-- Append-only, but for the one change sealing makes: a provisional seq becomes the event's place in the chain
-- and its hashes are set, once; nothing else about the event may change. (Same trigger name as 0002's.)
CREATE FUNCTION public.audit_event_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.seq < 0 AND OLD.hash IS NULL AND NEW.seq > 0 AND NEW.hash IS NOT NULL
       AND (NEW.chain_id, NEW.authority_id, NEW.supplier_id, NEW.id, NEW.occurred_at, NEW.actor, NEW.action, NEW.entity_type,
            NEW.entity_id, NEW.before, NEW.after, NEW.request_id)
           IS NOT DISTINCT FROM
           (OLD.chain_id, OLD.authority_id, OLD.supplier_id, OLD.id, OLD.occurred_at, OLD.actor, OLD.action, OLD.entity_type,
            OLD.entity_id, OLD.before, OLD.after, OLD.request_id)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END
$$;
DROP TRIGGER audit_event_append_only ON public.audit_event;
CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON public.audit_event
    FOR EACH ROW EXECUTE FUNCTION public.audit_event_append_only();

-- Only the sealer (SECURITY DEFINER, so the owner) updates events, and only unsealed ones.
CREATE POLICY audit_event_seal ON public.audit_event FOR UPDATE TO locality_owner
    USING (current_user = 'locality_owner' AND hash IS NULL) WITH CHECK (current_user = 'locality_owner');

-- Seals the chain's unsealed events (at most p_limit; all when NULL) and returns how many. p_wait: wait for
-- another sealer of the chain to finish (readers), or return 0 at once (appenders).
CREATE FUNCTION public.audit_seal(p_chain uuid, p_wait boolean, p_limit integer) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_seq bigint;
    v_hash bytea;
    v_event public.audit_event;
    v_provisional bigint;
    v_sealed integer := 0;
BEGIN
    FOR attempt IN 1..2 LOOP
        IF p_wait THEN
            SELECT h.seq, h.hash INTO v_seq, v_hash FROM public.audit_chain_head h WHERE h.chain_id = p_chain FOR UPDATE;
        ELSE
            SELECT h.seq, h.hash INTO v_seq, v_hash FROM public.audit_chain_head h WHERE h.chain_id = p_chain FOR UPDATE SKIP LOCKED;
        END IF;
        EXIT WHEN FOUND;
        -- Locked by another sealer (skipped), or the chain's first event: create the head if it is missing.
        IF attempt = 2 OR EXISTS (SELECT 1 FROM public.audit_chain_head h WHERE h.chain_id = p_chain) THEN
            RETURN 0;
        END IF;
        INSERT INTO public.audit_chain_head (chain_id, seq, hash)
        VALUES (p_chain, 0, '\x0000000000000000000000000000000000000000000000000000000000000000')
        ON CONFLICT (chain_id) DO NOTHING;
    END LOOP;
    FOR v_event IN
        SELECT * FROM public.audit_event e WHERE e.chain_id = p_chain AND e.hash IS NULL
        ORDER BY e.seq DESC LIMIT p_limit
    LOOP
        v_provisional := v_event.seq;
        v_event.seq := v_seq + 1;
        v_event.prev_hash := v_hash;
        v_event.hash := pg_catalog.sha256(v_hash || pg_catalog.convert_to(public.audit_canonical(v_event), 'UTF8'));
        UPDATE public.audit_event SET seq = v_event.seq, prev_hash = v_event.prev_hash, hash = v_event.hash
        WHERE chain_id = p_chain AND seq = v_provisional;
        v_seq := v_event.seq;
        v_hash := v_event.hash;
        v_sealed := v_sealed + 1;
    END LOOP;
    IF v_sealed > 0 THEN
        UPDATE public.audit_chain_head SET seq = v_seq, hash = v_hash WHERE chain_id = p_chain;
    END IF;
    RETURN v_sealed;
END
$$;
REVOKE ALL ON FUNCTION public.audit_seal(uuid, boolean, integer) FROM PUBLIC;

-- For the service: seals the current context's own chain (the authority's, else the supplier's), waiting.
CREATE FUNCTION public.audit_seal_own() RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_chain uuid := coalesce(public.app_authority_id(), public.app_supplier_id());
BEGIN
    IF v_chain IS NULL THEN
        RETURN 0;
    END IF;
    RETURN public.audit_seal(v_chain, true, NULL);
END
$$;
REVOKE ALL ON FUNCTION public.audit_seal_own() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.audit_seal_own() TO locality_app;

-- Appends one event for the current context's authority (or supplier), actor and request, in the transaction
-- of the change it records (a failed audit write fails the change). Signature and checks as in 0002; returns
-- the event's provisional seq (negative) unless this call sealed it.
CREATE OR REPLACE FUNCTION public.append_audit_event(p_action text, p_entity_type text, p_entity_id text, p_before jsonb, p_after jsonb)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_authority uuid := public.app_authority_id();
    v_supplier uuid := CASE WHEN public.app_authority_id() IS NULL THEN public.app_supplier_id() END;
    v_chain uuid := coalesce(public.app_authority_id(), public.app_supplier_id());
    v_actor text := nullif(current_setting('app.actor', true), '');
    v_id uuid := gen_random_uuid();
BEGIN
    IF v_chain IS NULL OR v_actor IS NULL THEN
        RAISE EXCEPTION 'audit event without authority or actor context' USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO public.audit_event (chain_id, seq, authority_id, supplier_id, id, occurred_at, actor, action, entity_type,
                                    entity_id, before, after, request_id, prev_hash, hash)
    VALUES (v_chain, -nextval('public.audit_pending_seq'), v_authority, v_supplier, v_id, clock_timestamp(), v_actor, p_action,
            p_entity_type, p_entity_id, p_before, p_after, nullif(current_setting('app.request_id', true), ''), NULL, NULL);
    -- Bounded, so that the writer who finds a backlog (after a burst) does not pay for all of it.
    PERFORM public.audit_seal(v_chain, false, 200);
    RETURN (SELECT e.seq FROM public.audit_event e WHERE e.id = v_id);
END
$$;
