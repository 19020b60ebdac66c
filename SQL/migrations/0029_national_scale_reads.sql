-- Indexes for the national-scale reads that were over 50 ms at p99 (issue 14, helper h12).
--
-- Under row-level security PostgreSQL applies a query's own filter before the policies only when the filter's
-- operator is leakproof (it cannot leak a row the policies would hide). Equality of uuid, text and timestamps
-- is; equality of an enum (`status = 'active'`, `status IN (…)`) is not, nor ILIKE, nor a row comparison. So
-- an index on (authority_id, status) does not help: the scan reads every contract of the authority by its
-- authority_id and runs the policies (an EXISTS on project each) before it looks at the status. A partial
-- index whose predicate is the status filter does help: the planner proves the predicate from the query, and
-- the rows it would discard are never read.

-- The dashboards' running contracts (negotiating or active, of any year) and their active contracts' overdue
-- returns: 107 of the large test authority's 1,407 contracts, instead of all of them, each through its policy.
CREATE INDEX contract_running ON contract (authority_id, created_at) WHERE status IN ('kpi_negotiation', 'active');

-- The dashboards' projects of a financial year (and their contracts): 180 of the authority's 1,800 projects.
CREATE INDEX project_year ON project (authority_id, financial_year, board_id);
