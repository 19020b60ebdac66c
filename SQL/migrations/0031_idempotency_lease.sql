-- Idempotency claims as leases (issue 16): a claim whose instance died is taken over within seconds, not 300 s,
-- and never repeats a change that was made.
--
-- claim_token: which run of the request holds the claim; a takeover gives the claim a new one.
-- lease_expires_at: the running request renews it every few seconds; once it has passed, a retry may take the
--   claim over (NULL: a claim of an older release, which may be taken over 300 s after created_at, as before).
-- applied_at: set by each write transaction of the claimed request, in that transaction and only while the
--   claim is still its token's. A lapsed claim with applied_at set is never run again: the change was made and
--   only its answer was lost. A run whose claim was taken over cannot commit (its mark finds another token).
ALTER TABLE idempotency_key
    ADD COLUMN claim_token uuid,
    ADD COLUMN lease_expires_at timestamptz,
    ADD COLUMN applied_at timestamptz;
COMMENT ON COLUMN idempotency_key.claim_token IS 'The run of the request that holds the claim (a takeover replaces it).';
COMMENT ON COLUMN idempotency_key.lease_expires_at IS 'The claim holds until then; the running request renews it.';
COMMENT ON COLUMN idempotency_key.applied_at IS 'A write of the claimed request committed (set in that write''s transaction).';
