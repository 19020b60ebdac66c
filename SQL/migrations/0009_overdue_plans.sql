-- The operator's scheduled check (locality-admin monitoring open-overdue) opens corrective action plans for
-- overdue returns; it runs as the owner in each authority's context.
CREATE POLICY corrective_action_plan_operator ON corrective_action_plan FOR ALL
    USING (current_user = 'locality_owner' AND authority_id = app_authority_id())
    WITH CHECK (current_user = 'locality_owner' AND authority_id = app_authority_id());
