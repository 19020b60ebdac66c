-- Indexes for national-scale data (issue 14): every list, dashboard and report the API serves reads its rows
-- through an index, never by scanning a table that grows with the country's data. Found by
-- ScaleDataTests.noListDashboardOrReportScansAGrowingTable on data from `locality-admin seed scale`.
--
-- Tenant lists are keyset-paginated newest first: (tenant, created_at, id) serves the order and the cursor (the
-- queries state the tenant, authority or supplier, beside row-level security, whose OR of policies no index
-- serves). Children are read by their parent's id, which is unique across tenants: the primary keys lead with
-- authority_id, which those queries do not give, so each such lookup gets an index leading with the parent.

-- Lists
CREATE INDEX contract_listing ON contract (authority_id, created_at, id);
CREATE INDEX contract_supplier_listing ON contract (supplier_id, created_at, id);
CREATE INDEX project_listing ON project (authority_id, created_at, id);
CREATE INDEX school_listing ON school (authority_id, name, urn);
CREATE INDEX school_contract_listing ON school_contract (authority_id, created_at, id);
CREATE INDEX school_contract_supplier_listing ON school_contract (supplier_id, created_at, id);

-- A project's bids, panel, declarations and questions
CREATE INDEX bid_project ON bid (project_id);
CREATE INDEX evaluation_panel_member_project ON evaluation_panel_member (project_id);
CREATE INDEX conflict_declaration_project ON conflict_declaration (project_id);
CREATE INDEX clarification_project ON clarification (project_id);

-- A bid's scores
CREATE INDEX individual_score_bid ON individual_score (bid_id);
CREATE INDEX moderated_score_bid ON moderated_score (bid_id);

-- A contract's KPIs, variations, monitoring and plans
CREATE INDEX contract_kpi_contract ON contract_kpi (contract_id, created_at);
CREATE INDEX contract_variation_contract ON contract_variation (contract_id, created_at);
CREATE INDEX reporting_period_contract_kpi ON reporting_period (contract_id, kpi_id, starts);
CREATE INDEX corrective_action_plan_contract ON corrective_action_plan (contract_id, opened_at);
CREATE INDEX monitoring_visit_contract ON monitoring_visit (contract_id);
CREATE INDEX complaint_contract ON complaint (contract_id);

-- A school's improvement plan
CREATE INDEX spip_priority_school ON spip_priority (urn);
CREATE INDEX school_contract_school ON school_contract (urn);
CREATE INDEX school_contract_output_contract ON school_contract_output (contract_id);
CREATE INDEX school_contract_assessment_contract ON school_contract_assessment (contract_id);
