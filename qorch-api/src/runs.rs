//! Runs, their reports (JSON and HTML) and tests' results and history, from the store's result
//! and report records (`orchestrator_core::history`), and from the reports directory.

use std::path::PathBuf;

use artifact_store::{ArtifactKind, ArtifactStore, Query};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use orchestrator_core::RunReport;
use orchestrator_core::history::{self, HistoryEntry, HistoryError, RunInfo};
use serde::{Deserialize, Serialize};

use crate::artifacts::query_rejection;
use crate::{ApiError, ApiState, REPAIR_COMMAND, blocking, validate};

/// The HTML report's policy: its inline CSS and SVG, nothing else (no script, no request).
const HTML_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";

impl From<HistoryError> for ApiError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::Store(e) => e.into(),
            e @ (HistoryError::UnknownRun { .. }
            | HistoryError::UnknownTest { .. }
            | HistoryError::NoResults { .. }) => ApiError::not_found(e.to_string()),
            e @ HistoryError::Corrupt { .. } => {
                ApiError::internal(format!("{e}; check the store with `{REPAIR_COMMAND}`"))
            }
            e => ApiError::internal(e.to_string()),
        }
    }
}

/// `?limit=N`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Limit {
    limit: Option<u64>,
}

impl Limit {
    fn get(&self, default: u64) -> Result<u64, ApiError> {
        let n = self.limit.unwrap_or(default);
        if n == 0 || n > crate::artifacts::MAX_LIMIT {
            return Err(ApiError::bad_request(format!(
                "`limit={n}`: between 1 and {}",
                crate::artifacts::MAX_LIMIT
            )));
        }
        Ok(n)
    }
}

/// `runs/<run id>/<file>` in the reports directory, if there is one and it holds the file.
fn report_file(reports: Option<&PathBuf>, run_id: &str, file: &str) -> Option<PathBuf> {
    let p = reports?.join("runs").join(run_id).join(file);
    p.is_file().then_some(p)
}

/// The run's report: the store's (its report record, else put together from its results),
/// else the reports directory's `runs/<id>/report.json`.
fn load(
    store: &ArtifactStore,
    reports: Option<&PathBuf>,
    run_id: &str,
) -> Result<RunReport, ApiError> {
    match history::load_run(store, run_id) {
        Ok(r) => Ok(r),
        // Not in the store, or stored by an earlier version that recorded no results.
        Err(e @ (HistoryError::UnknownRun { .. } | HistoryError::NoResults { .. })) => {
            match report_file(reports, run_id, "report.json") {
                Some(p) => RunReport::read_json(&p)
                    .map_err(|e| ApiError::internal(format!("run {run_id}: {e}"))),
                None => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// A run known only from the reports directory (written without a store, or by a version that
/// did not record reports in it), in [`RunInfo`]'s shape.
fn info_of_report(r: &RunReport) -> serde_json::Value {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for res in &r.results {
        *counts.entry(res.verdict().name()).or_default() += 1;
    }
    serde_json::json!({
        "run_id": r.run_id,
        "name": r.name,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "status": r.status().label(),
        "tests": r.results.len(),
        "counts": counts,
        "has_report": true,
        "in_store": false,
    })
}

/// The runs of the reports directory (`runs/<run id>/report.json`) that the store lacks.
fn reports_dir_runs(
    dir: &std::path::Path,
    known: &std::collections::HashSet<String>,
) -> Vec<serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(dir.join("runs")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if validate::run_id(&name).is_err() || known.contains(&name) {
            continue;
        }
        let file = e.path().join("report.json");
        match RunReport::read_json(&file) {
            // `latest` and other links name a run already listed.
            Ok(r) if !known.contains(&r.run_id) && seen.insert(r.run_id.clone()) => {
                out.push(info_of_report(&r))
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(file = %file.display(), error = %e, "not a run report"),
        }
    }
    out
}

/// `GET /api/v1/runs`: the stored runs, newest first (`?limit=`, default 100), and those of the
/// reports directory the store lacks (`"in_store": false`).
pub(crate) async fn list(
    State(state): State<ApiState>,
    limit: Result<axum::extract::Query<Limit>, QueryRejection>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let limit = limit.map_err(query_rejection)?.get(100)? as usize;
    let store = state.store();
    let reports = state.reports().cloned();
    let runs = blocking(move || {
        let stored: Vec<RunInfo> = history::runs(&store)?;
        let known = stored.iter().map(|r| r.run_id.clone()).collect();
        let mut all: Vec<serde_json::Value> = stored
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).expect("a run serialises");
                v["in_store"] = true.into();
                v
            })
            .collect();
        if let Some(dir) = &reports {
            all.extend(reports_dir_runs(dir, &known));
        }
        // Newest first.
        let start = |v: &serde_json::Value| {
            v["started_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        };
        all.sort_by_key(|v| std::cmp::Reverse(start(v)));
        all.truncate(limit);
        Ok(all)
    })
    .await?;
    Ok(Json(runs))
}

/// `GET /api/v1/runs/{run_id}`: the run's report as JSON.
pub(crate) async fn report(
    State(state): State<ApiState>,
    Path(run_id): Path<String>,
) -> Result<Json<RunReport>, ApiError> {
    validate::run_id(&run_id)?;
    let store = state.store();
    let reports = state.reports().cloned();
    Ok(Json(
        blocking(move || load(&store, reports.as_ref(), &run_id)).await?,
    ))
}

/// `GET /api/v1/runs/{run_id}/report.html`: the page the run wrote, else the page rendered from
/// its stored report.
pub(crate) async fn report_html(
    State(state): State<ApiState>,
    Path(run_id): Path<String>,
) -> Result<Response, ApiError> {
    validate::run_id(&run_id)?;
    let store = state.store();
    let reports = state.reports().cloned();
    let html = blocking(move || {
        if let Some(p) = report_file(reports.as_ref(), &run_id, "report.html") {
            return std::fs::read_to_string(&p)
                .map_err(|e| ApiError::internal(format!("cannot read {}: {e}", p.display())));
        }
        let report = load(&store, reports.as_ref(), &run_id)?;
        Ok(orchestrator_core::report::html_report(&report))
    })
    .await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(HTML_CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        html,
    )
        .into_response())
}

/// `GET /api/v1/tests/{test_id}/history`: the test's stored results' figures, newest first
/// (`?limit=`, default 100), evicted results included.
pub(crate) async fn test_history(
    State(state): State<ApiState>,
    Path(test_id): Path<String>,
    limit: Result<axum::extract::Query<Limit>, QueryRejection>,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    validate::test_id(&test_id)?;
    let limit = limit.map_err(query_rejection)?.get(100)? as usize;
    let store = state.store();
    Ok(Json(
        blocking(move || Ok(history::test_history(&store, &test_id, limit)?)).await?,
    ))
}

/// `?run=&limit=` of a test's results.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResultsParams {
    run: Option<String>,
    limit: Option<u64>,
}

/// One stored result: its record and the `TestResult` JSON (`null` when its blob was evicted).
#[derive(Debug, Serialize)]
pub(crate) struct StoredResult {
    artifact_id: String,
    run_id: String,
    created_at: chrono::DateTime<chrono::Utc>,
    evicted: Option<artifact_store::Eviction>,
    result: Option<serde_json::Value>,
}

/// `GET /api/v1/tests/{test_id}/results`: the test's whole stored results, newest first
/// (`?run=` one run's, `?limit=`, default 20), each read from the store verified.
pub(crate) async fn test_results(
    State(state): State<ApiState>,
    Path(test_id): Path<String>,
    params: Result<axum::extract::Query<ResultsParams>, QueryRejection>,
) -> Result<Json<Vec<StoredResult>>, ApiError> {
    validate::test_id(&test_id)?;
    let params = params.map_err(query_rejection)?;
    let limit = Limit {
        limit: params.limit,
    }
    .get(20)?;
    if let Some(r) = &params.run {
        validate::run_id(r)?;
    }
    let store = state.store();
    let out = blocking(move || {
        let mut q = Query::new()
            .test(&test_id)
            .kind(ArtifactKind::Result)
            .include_evicted(true)
            .newest_first(true)
            .limit(limit);
        if let Some(r) = &params.run {
            q = q.run(r);
        }
        let records = store.query(&q)?;
        if records.is_empty() {
            // Unknown test (or run): the history's error names close ids.
            history::test_history(&store, &test_id, 1)?;
            return Err(ApiError::not_found(format!(
                "no result of test `{test_id}` in run `{}`",
                params.run.as_deref().unwrap_or("")
            )));
        }
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let result = match r.evicted {
                Some(_) => None,
                None => {
                    let bytes = store.get(&r.id)?;
                    Some(serde_json::from_slice(&bytes).map_err(|e| {
                        ApiError::internal(format!(
                            "stored result {} of test {test_id} is not JSON: {e}; check the store with `{REPAIR_COMMAND}`",
                            r.id
                        ))
                    })?)
                }
            };
            out.push(StoredResult {
                artifact_id: r.id,
                run_id: r.run_id,
                created_at: r.created_at,
                evicted: r.evicted,
                result,
            });
        }
        Ok(out)
    })
    .await?;
    Ok(Json(out))
}
