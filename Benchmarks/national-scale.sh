#!/usr/bin/env bash
# Every list, dashboard, report and CSV read of the API, measured with wrk at 8 connections on a national-scale
# dataset from `locality-admin seed scale` (issue 14). Prints a Markdown table: operation, rows in play, p99, req/s.
#
#   OWNER_URL=postgresql:///national?host=/tmp/pg\&user=locality_owner \
#   BASE=http://127.0.0.1:8080 SEED=42 Benchmarks/national-scale.sh
#
# Needs: a release `locality-server` serving BASE on that database, `locality-admin` (.build/release), psql, wrk.
# Reads authority scale-<SEED>-1 (a large one: 25,000 schools at the default size) and its first board.
# Environment: D (seconds per operation, 10), WARM (seconds of warm-up before each, 1), C (connections, 8),
# T (wrk threads, 2), AS_OF (the generator's
# --as-of, default today), ONLY (an extended regular expression: measure only the operations whose
# "operation|role" matches, e.g. ONLY='Dashboard|listContracts' for a before/after run of a few).
set -euo pipefail
: "${OWNER_URL:?set OWNER_URL to the owner role database URL}"
BASE=${BASE:-http://127.0.0.1:8080}; SEED=${SEED:-42}; D=${D:-10}; C=${C:-8}; T=${T:-2}
ADMIN=${ADMIN:-.build/release/locality-admin}
AS_OF=${AS_OF:-$(date -u +%F)}
SLUG=scale-$SEED-1
DOMAIN=a1.scale$SEED.example.test
psql_q() { psql "$OWNER_URL" -Atq -v ON_ERROR_STOP=1 "$@"; }
# The owner reads across tenants only with the backup opt-in (policy owner_backup_read, migration 0018).
psql_all() { psql_q -c "SET app.backup = on" "$@"; }

token() {   # a staff user's token, issued (and audited) by the operator's CLI
  "$ADMIN" token issue --authority "$SLUG" --user "$1@$DOMAIN" --label national-scale-bench --expires-in-days 1 \
    --owner-database-url "$OWNER_URL" 2>/dev/null
}
ADMIN_T=$(token admin); AUDITOR_T=$(token auditor); HOSI_T=$(token hosi); LIM_T=$(token lim.0); MEMBER_T=$(token member.0.0)
# A supplier token: the CLI issues staff tokens only, so the operator writes one row as the owner (the policy
# api_token_operator_supplier allows it); only the token's SHA-256 is stored, as the service does.
SUPPLIER_T=lcm_$(openssl rand -hex 6)_$(openssl rand -base64 32 | tr '+/' '-_' | tr -d '=\n' | cut -c1-43)
AUTHORITY=$(psql_all -c "SELECT id FROM authority WHERE slug = '$SLUG'")
SUPPLIER=$(psql_all -c "SELECT supplier_id FROM supplier_admission WHERE authority_id = '$AUTHORITY' AND status = 'approved' ORDER BY supplier_id LIMIT 1")
psql_all -c "INSERT INTO api_token (supplier_id, user_id, prefix, token_hash, label, expires_at)
           SELECT u.supplier_id, u.id, left('$SUPPLIER_T', 16), sha256(convert_to('$SUPPLIER_T', 'UTF8')), 'national-scale-bench', now() + interval '1 day'
           FROM app_user u WHERE u.supplier_id = '$SUPPLIER' LIMIT 1" >/dev/null

# Sample rows (as the owner with the authority's operator context).
sample() {
  psql_q -c "SELECT set_config('app.authority_id', '$AUTHORITY', false), set_config('app.roles', 'authority_admin,auditor', false)" \
         -c "$1" | tail -1
}
BOARD=$(sample "SELECT id FROM board WHERE short_code = 'B1'")
YEAR=$(sample "SELECT financial_year FROM project ORDER BY financial_year DESC LIMIT 1")
ACADEMIC=$YEAR   # the academic year starting in the same calendar year
PROJECT=$(sample "SELECT p.id FROM project p JOIN contract c ON c.project_id = p.id AND c.authority_id = p.authority_id
                  WHERE p.board_id = '$BOARD' AND c.status = 'active' ORDER BY p.created_at DESC LIMIT 1")
CONTRACT=$(sample "SELECT id FROM contract WHERE project_id = '$PROJECT'")
BID=$(sample "SELECT awarded_bid_id FROM project WHERE id = '$PROJECT'")
URN=$(sample "SELECT urn FROM school_concern ORDER BY urn LIMIT 1")
ADMIN_ID=$(sample "SELECT id FROM app_user WHERE email = 'admin@$DOMAIN'")
count() { sample "SELECT count(*) FROM ($1) x"; }

# operation | role | token | path | rows in play (SQL counted in the authority's context)
ROWS=(
  "listProjects|admin|$ADMIN_T|/v1/projects|SELECT 1 FROM project"
  "listProjects (board, status)|lim|$LIM_T|/v1/projects?board_id=$BOARD&status=awarded|SELECT 1 FROM project WHERE board_id = '$BOARD'"
  "listProjects (text search)|board_member|$MEMBER_T|/v1/projects?q=literacy|SELECT 1 FROM project WHERE board_id = '$BOARD'"
  "listOpportunities|supplier|$SUPPLIER_T|/v1/opportunities|SELECT 1 FROM project WHERE status = 'open' AND bid_deadline > now()"
  "listContracts|admin|$ADMIN_T|/v1/contracts|SELECT 1 FROM contract"
  "listContracts|lim|$LIM_T|/v1/contracts|SELECT 1 FROM contract c JOIN project p ON p.id = c.project_id WHERE p.board_id = '$BOARD'"
  "listContracts|supplier|$SUPPLIER_T|/v1/contracts|SELECT 1 FROM contract WHERE supplier_id = '$SUPPLIER'"
  "listSchools|admin|$ADMIN_T|/v1/schools|SELECT 1 FROM school"
  "listSchools (board, phase)|lim|$LIM_T|/v1/schools?board_id=$BOARD&phase=Primary|SELECT 1 FROM school WHERE board_id = '$BOARD'"
  "listSchools (causing concern)|hosi|$HOSI_T|/v1/schools?causing_concern=true|SELECT 1 FROM school_concern"
  "listSchools (name search)|admin|$ADMIN_T|/v1/schools?q=Oakfield|SELECT 1 FROM school"
  "listSchoolContracts|hosi|$HOSI_T|/v1/school-contracts|SELECT 1 FROM school_contract"
  "getSPIP|hosi|$HOSI_T|/v1/schools/$URN/spip|SELECT 1 FROM school_contract WHERE urn = $URN"
  "listAuditEvents|auditor|$AUDITOR_T|/v1/audit-events|SELECT 1 FROM audit_event WHERE chain_id = '$AUTHORITY'"
  "listAuditEvents (entity)|auditor|$AUDITOR_T|/v1/audit-events?entity_type=project&entity_id=$PROJECT|SELECT 1 FROM audit_event WHERE chain_id = '$AUTHORITY'"
  "listLedgerEntries|admin|$ADMIN_T|/v1/boards/$BOARD/ledger?financial_year=$YEAR|SELECT 1 FROM budget_ledger WHERE board_id = '$BOARD' AND financial_year = '$YEAR'"
  "getBudget|lim|$LIM_T|/v1/boards/$BOARD/budgets/$YEAR|SELECT 1 FROM budget_balance WHERE board_id = '$BOARD' AND financial_year = '$YEAR'"
  "getAuthorityDashboard|admin|$ADMIN_T|/v1/dashboard?financial_year=$YEAR|SELECT 1 FROM contract"
  "getBoardDashboard|lim|$LIM_T|/v1/boards/$BOARD/dashboard?financial_year=$YEAR|SELECT 1 FROM contract c JOIN project p ON p.id = c.project_id WHERE p.board_id = '$BOARD'"
  "exportMonitoringReport (CSV)|lim|$LIM_T|/v1/boards/$BOARD/monitoring-report.csv?academic_year=$ACADEMIC&term=summer|SELECT 1 FROM reporting_period rp JOIN contract c ON c.id = rp.contract_id JOIN project p ON p.id = c.project_id WHERE p.board_id = '$BOARD'"
  "getEvaluationReport|lim|$LIM_T|/v1/projects/$PROJECT/evaluation|SELECT 1 FROM individual_score s JOIN bid b ON b.id = s.bid_id WHERE b.project_id = '$PROJECT'"
  "exportEvaluationReport (CSV)|auditor|$AUDITOR_T|/v1/projects/$PROJECT/evaluation.csv|SELECT 1 FROM individual_score s JOIN bid b ON b.id = s.bid_id WHERE b.project_id = '$PROJECT'"
  "listBids|lim|$LIM_T|/v1/projects/$PROJECT/bids|SELECT 1 FROM bid WHERE project_id = '$PROJECT'"
  "listBidders|lim|$LIM_T|/v1/projects/$PROJECT/bidders|SELECT 1 FROM bid WHERE project_id = '$PROJECT'"
  "listDeclarations|lim|$LIM_T|/v1/projects/$PROJECT/declarations|SELECT 1 FROM conflict_declaration WHERE project_id = '$PROJECT'"
  "getPanel|lim|$LIM_T|/v1/projects/$PROJECT/panel|SELECT 1 FROM evaluation_panel_member WHERE project_id = '$PROJECT'"
  "listScores|lim|$LIM_T|/v1/bids/$BID/scores|SELECT 1 FROM individual_score WHERE bid_id = '$BID'"
  "listQuestions|lim|$LIM_T|/v1/projects/$PROJECT/questions|SELECT 1 FROM clarification WHERE project_id = '$PROJECT'"
  "listReturns|lim|$LIM_T|/v1/contracts/$CONTRACT/returns|SELECT 1 FROM reporting_period WHERE contract_id = '$CONTRACT'"
  "listCorrectiveActions|lim|$LIM_T|/v1/contracts/$CONTRACT/corrective-actions|SELECT 1 FROM corrective_action_plan WHERE contract_id = '$CONTRACT'"
  "listVisits|lim|$LIM_T|/v1/contracts/$CONTRACT/visits|SELECT 1 FROM monitoring_visit WHERE contract_id = '$CONTRACT'"
  "listComplaints|lim|$LIM_T|/v1/contracts/$CONTRACT/complaints|SELECT 1 FROM complaint WHERE contract_id = '$CONTRACT'"
  "listUsers|admin|$ADMIN_T|/v1/users|SELECT 1 FROM app_user WHERE authority_id = '$AUTHORITY'"
  "listBoards|admin|$ADMIN_T|/v1/boards|SELECT 1 FROM board"
  "listTokens|admin|$ADMIN_T|/v1/users/$ADMIN_ID/tokens|SELECT 1 FROM api_token WHERE user_id = '$ADMIN_ID'"
  "listAdmissions|admin|$ADMIN_T|/v1/admissions|SELECT 1 FROM supplier_admission WHERE authority_id = '$AUTHORITY'"
  "listFundingStreams|admin|$ADMIN_T|/v1/funding-streams|SELECT 1 FROM funding_stream"
  "listThemes|admin|$ADMIN_T|/v1/themes|SELECT 1 FROM theme"
  "listSocialValueMeasures|admin|$ADMIN_T|/v1/social-value-measures|SELECT 1 FROM social_value_measure"
  "getSchoolBoardRules|admin|$ADMIN_T|/v1/school-board-rules|SELECT 1 FROM school_board_rule"
  "listAuthorities|supplier|$SUPPLIER_T|/v1/authorities|SELECT 1 FROM authority"
  "listMyAdmissions|supplier|$SUPPLIER_T|/v1/supplier/admissions|SELECT 1 FROM supplier_admission WHERE supplier_id = '$SUPPLIER'"
)

echo "| operation | role | rows in play | p99 (ms) | req/s |"
echo "|---|---|---:|---:|---:|"
for row in "${ROWS[@]}"; do
  IFS='|' read -r op role tok path rows_sql <<<"$row"
  [ -z "${ONLY:-}" ] || grep -Eq -- "$ONLY" <<<"$op|$role" || continue
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $tok" "$BASE$path")
  [ "$status" = 200 ] || { echo "| $op | $role | - | HTTP $status | - |"; continue; }
  rows=$(count "$rows_sql")
  # A warm-up first (WARM seconds, 1 by default; 0 for none): the server opens pool connections as it needs
  # them and each session prepares a statement on its first use, which would otherwise land in the p99.
  [ "${WARM:-1}" = 0 ] || wrk -t"$T" -c"$C" -d"${WARM:-1}s" -H "Authorization: Bearer $tok" "$BASE$path" >/dev/null
  out=$(wrk -t"$T" -c"$C" -d"${D}s" --latency -H "Authorization: Bearer $tok" "$BASE$path")
  p99=$(awk '/^ +99%/ { v=$2; if (v ~ /us$/) { sub(/us$/, "", v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v=v*1000 }; printf "%.1f", v }' <<<"$out")
  rps=$(awk '/^Requests\/sec/ { printf "%.0f", $2 }' <<<"$out")
  errors=$(grep -Eo 'Non-2xx or 3xx responses: [0-9]+' <<<"$out" || true)
  echo "| $op | $role | $rows | $p99 | $rps${errors:+ ($errors)} |"
done
