-- An audited write that can take its chain's head writes its event sealed (issue 14).
--
-- Since 0028 every event was inserted unsealed (provisional negative seq, no hashes) and then, in the common
-- case of a chain nobody else was sealing, sealed at once by its own append: an UPDATE of the row just
-- inserted. That update changes the event's key and hashes, so it writes a second version of the whole row
-- (the `after` of a bid is a kilobyte of JSON), a new entry in each of audit_event's indexes, and leaves an
-- entry in the unsealed index behind to be cleaned: measured alone, 30 µs and 1,160 bytes of WAL per event,
-- about a fifth of a bid submission's time in PostgreSQL.
--
-- Now append takes the head first (FOR UPDATE SKIP LOCKED, as the sealer did), and when it has it and the
-- chain has no unsealed backlog left, inserts its own event already sealed: the next seq, the head's hash as
-- prev_hash, sha256(prev_hash || audit_canonical(event)), exactly what sealing would have written. A backlog
-- (events of transactions that found the head taken) is sealed first, by audit_seal, so the chain keeps the
-- order in which events became visible. When another transaction holds the head, or a backlog larger than one
-- append's bound remains, the event is written unsealed as before and the next sealer chains it.
--
-- Nothing else changes: the head is held until the transaction ends, as 0028's sealing append held it; the
-- storage, the sealer, the audit list and the verifier are as they were, and a chain written either way
-- verifies the same.
--
-- Written to work under an empty search_path (names of ours schema-qualified), like 0019.

CREATE OR REPLACE FUNCTION public.append_audit_event(p_action text, p_entity_type text, p_entity_id text, p_before jsonb, p_after jsonb)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_authority uuid := public.app_authority_id();
    v_supplier uuid := CASE WHEN public.app_authority_id() IS NULL THEN public.app_supplier_id() END;
    v_chain uuid := coalesce(public.app_authority_id(), public.app_supplier_id());
    v_actor text := nullif(current_setting('app.actor', true), '');
    v_event public.audit_event;
    v_seq bigint;
    v_hash bytea;
    v_holds_head boolean;
BEGIN
    IF v_chain IS NULL OR v_actor IS NULL THEN
        RAISE EXCEPTION 'audit event without authority or actor context' USING ERRCODE = 'insufficient_privilege';
    END IF;
    v_event := ROW(v_chain, NULL, v_authority, v_supplier, gen_random_uuid(), clock_timestamp(), v_actor, p_action,
                   p_entity_type, p_entity_id, p_before, p_after, nullif(current_setting('app.request_id', true), ''),
                   NULL, NULL);

    SELECT h.seq, h.hash INTO v_seq, v_hash FROM public.audit_chain_head h WHERE h.chain_id = v_chain FOR UPDATE SKIP LOCKED;
    v_holds_head := FOUND;
    IF NOT v_holds_head AND NOT EXISTS (SELECT 1 FROM public.audit_chain_head h WHERE h.chain_id = v_chain) THEN
        -- The chain's first event: create its head (waiting only while another first event is uncommitted).
        INSERT INTO public.audit_chain_head (chain_id, seq, hash)
        VALUES (v_chain, 0, '\x0000000000000000000000000000000000000000000000000000000000000000')
        ON CONFLICT (chain_id) DO NOTHING;
        SELECT h.seq, h.hash INTO v_seq, v_hash FROM public.audit_chain_head h WHERE h.chain_id = v_chain FOR UPDATE SKIP LOCKED;
        v_holds_head := FOUND;
    END IF;

    IF v_holds_head AND EXISTS (SELECT 1 FROM public.audit_event e WHERE e.chain_id = v_chain AND e.hash IS NULL) THEN
        -- Events that found the head taken come first. Bounded, so that the writer who finds a backlog (after a
        -- burst) does not pay for all of it; what it leaves, its own event waits behind.
        IF public.audit_seal(v_chain, false, 200) = 200
           AND EXISTS (SELECT 1 FROM public.audit_event e WHERE e.chain_id = v_chain AND e.hash IS NULL) THEN
            v_holds_head := false;
        ELSE
            SELECT h.seq, h.hash INTO v_seq, v_hash FROM public.audit_chain_head h WHERE h.chain_id = v_chain;
        END IF;
    END IF;

    IF v_holds_head THEN
        v_event.seq := v_seq + 1;
        v_event.prev_hash := v_hash;
        v_event.hash := pg_catalog.sha256(v_hash || pg_catalog.convert_to(public.audit_canonical(v_event), 'UTF8'));
        INSERT INTO public.audit_event SELECT v_event.*;
        UPDATE public.audit_chain_head SET seq = v_event.seq, hash = v_event.hash WHERE chain_id = v_chain;
    ELSE
        v_event.seq := -nextval('public.audit_pending_seq');
        INSERT INTO public.audit_event SELECT v_event.*;
    END IF;
    RETURN v_event.seq;
END
$$;
