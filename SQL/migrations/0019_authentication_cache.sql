-- The service caches who a token belongs to (AuthenticationCache) so that most requests need no database
-- round trip to authenticate. Every change that could make a cached answer wrong notifies the service's
-- instances on channel `locality_auth` with the user's id (NOTIFY is sent at commit, and only then):
--   api_token        revoked, re-dated, moved or deleted (not `last_used_at`, touched once a minute)
--   app_user         any change (disabled, name, email: the principal carries them) or deletion
--   role_assignment  any change: roles and board scope
-- A TRUNCATE of any of them notifies 'all'. Instances drop the user's cached tokens when notified.
--
-- Written to work under an empty search_path (pg_dump's restore, helper functions called from anywhere):
-- every name outside pg_catalog is schema-qualified.

CREATE FUNCTION public.notify_authentication_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_user uuid;
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_catalog.pg_notify('locality_auth', 'all');
        RETURN NULL;
    END IF;
    IF TG_TABLE_NAME = 'app_user' THEN
        IF TG_OP = 'DELETE' THEN v_user := OLD.id; ELSE v_user := NEW.id; END IF;
    ELSE
        IF TG_OP = 'DELETE' THEN v_user := OLD.user_id; ELSE v_user := NEW.user_id; END IF;
        -- A row moved to another user affects both.
        IF TG_OP = 'UPDATE' AND OLD.user_id IS DISTINCT FROM NEW.user_id THEN
            PERFORM pg_catalog.pg_notify('locality_auth', OLD.user_id::text);
        END IF;
    END IF;
    PERFORM pg_catalog.pg_notify('locality_auth', v_user::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER api_token_authentication_change
    AFTER UPDATE ON public.api_token FOR EACH ROW
    WHEN ((OLD.revoked_at, OLD.expires_at, OLD.token_hash, OLD.prefix, OLD.user_id, OLD.authority_id, OLD.supplier_id)
          IS DISTINCT FROM (NEW.revoked_at, NEW.expires_at, NEW.token_hash, NEW.prefix, NEW.user_id, NEW.authority_id, NEW.supplier_id))
    EXECUTE FUNCTION public.notify_authentication_change();
CREATE TRIGGER api_token_authentication_delete
    AFTER DELETE ON public.api_token FOR EACH ROW EXECUTE FUNCTION public.notify_authentication_change();
CREATE TRIGGER api_token_authentication_truncate
    AFTER TRUNCATE ON public.api_token FOR EACH STATEMENT EXECUTE FUNCTION public.notify_authentication_change();

CREATE TRIGGER app_user_authentication_change
    AFTER UPDATE OR DELETE ON public.app_user FOR EACH ROW EXECUTE FUNCTION public.notify_authentication_change();
CREATE TRIGGER app_user_authentication_truncate
    AFTER TRUNCATE ON public.app_user FOR EACH STATEMENT EXECUTE FUNCTION public.notify_authentication_change();

CREATE TRIGGER role_assignment_authentication_change
    AFTER INSERT OR UPDATE OR DELETE ON public.role_assignment FOR EACH ROW
    EXECUTE FUNCTION public.notify_authentication_change();
CREATE TRIGGER role_assignment_authentication_truncate
    AFTER TRUNCATE ON public.role_assignment FOR EACH STATEMENT EXECUTE FUNCTION public.notify_authentication_change();

-- The token lookup also returns the token's expiry, so that a cached principal is never used past it.
-- (A new result column needs DROP and CREATE; the body is otherwise unchanged, names schema-qualified.)
DROP FUNCTION public.find_api_token(text);
CREATE FUNCTION public.find_api_token(p_prefix text)
RETURNS TABLE (token_id uuid, token_hash bytea, authority_id uuid, supplier_id uuid, user_id uuid,
               display_name text, email text, roles text[], board_ids uuid[], last_used_at timestamptz,
               expires_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT t.id, t.token_hash, t.authority_id, t.supplier_id, t.user_id, u.display_name, u.email,
           CASE WHEN t.supplier_id IS NOT NULL THEN ARRAY['supplier_user']
                ELSE coalesce(array_agg(DISTINCT r.role::text) FILTER (WHERE r.role IS NOT NULL), '{}') END,
           coalesce(array_agg(DISTINCT r.board_id) FILTER (WHERE r.board_id IS NOT NULL), '{}'),
           t.last_used_at, t.expires_at
    FROM public.api_token t
    JOIN public.app_user u ON u.id = t.user_id
    LEFT JOIN public.role_assignment r ON r.authority_id = t.authority_id AND r.user_id = t.user_id
    WHERE t.prefix = p_prefix AND t.revoked_at IS NULL AND t.expires_at > pg_catalog.now() AND u.disabled_at IS NULL
    GROUP BY t.id, u.id;
END
$$;
REVOKE ALL ON FUNCTION public.find_api_token(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.find_api_token(text) TO locality_app;
