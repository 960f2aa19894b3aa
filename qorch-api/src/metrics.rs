//! `/metrics`: the Prometheus text exposition, written by the `prometheus-client` crate from a
//! registry filled at each scrape from the store.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use artifact_store::ArtifactStore;
use orchestrator_core::history;
use orchestrator_core::{ResourceUsage, TestResult, Verdict};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::{ApiError, ApiState, blocking};

type FloatGauge = Gauge<f64, AtomicU64>;
type Labels = Vec<(String, String)>;

/// Registers a gauge without labels set to `v`.
fn gauge(reg: &mut Registry, name: &str, help: &str, unit: Option<Unit>, v: f64) {
    let g = FloatGauge::default();
    g.set(v);
    match unit {
        Some(u) => reg.register_with_unit(name, help, u, g),
        None => reg.register(name, help, g),
    }
}

/// The store's figures.
fn store_metrics(reg: &mut Registry, stats: &artifact_store::Stats) {
    let records = Family::<Labels, FloatGauge>::default();
    records
        .get_or_create(&vec![("state".into(), "live".into())])
        .set(stats.live_records as f64);
    records
        .get_or_create(&vec![("state".into(), "evicted".into())])
        .set(stats.evicted_records as f64);
    reg.register(
        "qorch_store_records",
        "Artifact records in the store's catalog, by whether their content is kept",
        records,
    );
    gauge(
        reg,
        "qorch_store_blobs",
        "Distinct blobs the live records use",
        None,
        stats.blobs as f64,
    );
    gauge(
        reg,
        "qorch_store_logical",
        "Content size of the live records, as if nothing were deduplicated",
        Some(Unit::Bytes),
        stats.logical_bytes as f64,
    );
    gauge(
        reg,
        "qorch_store_unique",
        "Content size of the distinct blobs",
        Some(Unit::Bytes),
        stats.unique_bytes as f64,
    );
    gauge(
        reg,
        "qorch_store_stored",
        "Size of the distinct blobs on disk (compressed, with headers)",
        Some(Unit::Bytes),
        stats.stored_bytes as f64,
    );
    gauge(
        reg,
        "qorch_store_dedup_ratio",
        "Logical bytes over unique bytes (1 when empty)",
        None,
        stats.dedup_ratio(),
    );
    gauge(
        reg,
        "qorch_store_compression_ratio",
        "Unique bytes over stored bytes (1 when empty)",
        None,
        stats.compression_ratio(),
    );
    let by_kind = Family::<Labels, FloatGauge>::default();
    for (kind, usage) in &stats.by_kind {
        by_kind
            .get_or_create(&vec![("kind".into(), kind.clone())])
            .set(usage.raw_bytes as f64);
    }
    reg.register_with_unit(
        "qorch_store_kind",
        "Content size of the live records, by artifact kind",
        Unit::Bytes,
        by_kind,
    );
}

/// A family of gauges with one label, set from `values`.
fn per_label(
    reg: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    label: &str,
    values: impl IntoIterator<Item = (String, f64)>,
) {
    let family = Family::<Labels, FloatGauge>::default();
    for (l, v) in values {
        family.get_or_create(&vec![(label.to_owned(), l)]).set(v);
    }
    match unit {
        Some(u) => reg.register_with_unit(name, help, u, family),
        None => reg.register(name, help, family),
    }
}

/// The runs: their count and durations, the last run's tests by verdict and by outcome and
/// each of its tests' figures.
fn run_metrics(reg: &mut Registry, store: &ArtifactStore) -> Result<(), ApiError> {
    let runs = history::runs(store)?;
    gauge(
        reg,
        "qorch_runs",
        "Runs in the store",
        None,
        runs.len() as f64,
    );
    let durations = Histogram::new(exponential_buckets(1.0, 2.0, 16));
    for r in &runs {
        if let Some(f) = r.finished_at {
            durations.observe((f - r.started_at).num_milliseconds().max(0) as f64 / 1000.0);
        }
    }
    reg.register_with_unit(
        "qorch_run_duration",
        "Wall time of the stored runs that finished with a report",
        Unit::Seconds,
        durations,
    );
    let Some(last) = runs.first() else {
        return Ok(());
    };
    let info = Family::<Labels, FloatGauge>::default();
    info.get_or_create(&vec![
        ("run_id".into(), last.run_id.clone()),
        ("name".into(), last.name.clone().unwrap_or_default()),
        (
            "status".into(),
            last.status.clone().unwrap_or_else(|| "unfinished".into()),
        ),
    ])
    .set(1.0);
    reg.register(
        "qorch_last_run_info",
        "The newest run in the store (value 1; its id, plan name and status as labels)",
        info,
    );
    gauge(
        reg,
        "qorch_last_run_start_timestamp",
        "When the newest run started (Unix time)",
        Some(Unit::Seconds),
        last.started_at.timestamp_millis() as f64 / 1000.0,
    );
    if let Some(f) = last.finished_at {
        gauge(
            reg,
            "qorch_last_run_duration",
            "Wall time of the newest run",
            Some(Unit::Seconds),
            (f - last.started_at).num_milliseconds().max(0) as f64 / 1000.0,
        );
    }
    per_label(
        reg,
        "qorch_last_run_tests",
        "Tests of the newest run by verdict (against each test's expectation)",
        None,
        "verdict",
        Verdict::ALL.into_iter().map(|v| {
            let n = last.counts.get(v.name()).copied().unwrap_or(0);
            (v.name().to_owned(), n as f64)
        }),
    );
    let report = history::load_run(store, &last.run_id)?;
    let mut outcomes: BTreeMap<String, f64> = BTreeMap::new();
    for r in &report.results {
        *outcomes.entry(r.outcome.label().to_owned()).or_default() += 1.0;
    }
    per_label(
        reg,
        "qorch_last_run_outcomes",
        "Tests of the newest run by outcome",
        None,
        "outcome",
        outcomes,
    );
    let test = |r: &TestResult| r.test_id.as_str().to_owned();
    let res = &report.results;
    per_label(
        reg,
        "qorch_last_run_test_duration",
        "Wall time of each test of the newest run",
        Some(Unit::Seconds),
        "test",
        res.iter().map(|r| (test(r), r.duration().as_secs_f64())),
    );
    let monitored: Vec<(&TestResult, &ResourceUsage)> = res
        .iter()
        .filter_map(|r| r.resources.as_ref().map(|u| (r, u)))
        .collect();
    per_label(
        reg,
        "qorch_last_run_test_cpu",
        "CPU time of each monitored test's processes in the newest run",
        Some(Unit::Seconds),
        "test",
        monitored.iter().map(|(r, u)| (test(r), u.cpu_seconds)),
    );
    per_label(
        reg,
        "qorch_last_run_test_peak_rss",
        "Peak memory (RSS) of each monitored test's processes in the newest run",
        Some(Unit::Bytes),
        "test",
        monitored
            .iter()
            .map(|(r, u)| (test(r), u.peak_rss_bytes as f64)),
    );
    per_label(
        reg,
        "qorch_last_run_test_read",
        "Bytes each monitored test's processes read in the newest run",
        Some(Unit::Bytes),
        "test",
        monitored
            .iter()
            .filter_map(|(r, u)| Some((test(r), u.read_bytes? as f64))),
    );
    per_label(
        reg,
        "qorch_last_run_test_written",
        "Bytes each monitored test's processes wrote in the newest run",
        Some(Unit::Bytes),
        "test",
        monitored
            .iter()
            .filter_map(|(r, u)| Some((test(r), u.write_bytes? as f64))),
    );
    // The later figures, each where the monitor could read it.
    type Figure = (
        &'static str,
        &'static str,
        Option<Unit>,
        fn(&ResourceUsage) -> Option<f64>,
    );
    let figures: [Figure; 10] = [
        (
            "qorch_last_run_test_cpu_user",
            "User CPU time of each monitored test's processes",
            Some(Unit::Seconds),
            |u| u.cpu_user_seconds,
        ),
        (
            "qorch_last_run_test_cpu_system",
            "System CPU time of each monitored test's processes",
            Some(Unit::Seconds),
            |u| u.cpu_system_seconds,
        ),
        (
            "qorch_last_run_test_peak_threads",
            "Most threads each monitored test had at once",
            None,
            |u| u.processes.as_ref().map(|p| p.peak_threads as f64),
        ),
        (
            "qorch_last_run_test_peak_open_files",
            "Most open file descriptors each monitored test had at once",
            None,
            |u| {
                u.processes
                    .as_ref()
                    .and_then(|p| p.peak_open_files)
                    .map(|n| n as f64)
            },
        ),
        (
            "qorch_last_run_test_namespace_received",
            "Bytes received in the network namespace each monitored test ran in (the namespace's traffic, not the test's alone)",
            Some(Unit::Bytes),
            |u| u.network.as_ref().map(|n| n.rx_bytes as f64),
        ),
        (
            "qorch_last_run_test_namespace_sent",
            "Bytes sent in the network namespace each monitored test ran in (the namespace's traffic, not the test's alone)",
            Some(Unit::Bytes),
            |u| u.network.as_ref().map(|n| n.tx_bytes as f64),
        ),
        (
            "qorch_last_run_test_host_load1_peak",
            "Highest 1-minute load average of the host while each monitored test ran",
            None,
            |u| u.host.as_ref().and_then(|h| h.load1_peak),
        ),
        (
            "qorch_last_run_test_host_cpu_pressure_percent",
            "Share of each monitored test's time some task of the host stalled on CPU",
            None,
            |u| u.host.as_ref().and_then(|h| h.cpu_pressure),
        ),
        (
            "qorch_last_run_test_host_memory_pressure_percent",
            "Share of each monitored test's time all tasks of the host stalled on memory",
            None,
            |u| u.host.as_ref().and_then(|h| h.memory_pressure),
        ),
        (
            "qorch_last_run_test_host_io_pressure_percent",
            "Share of each monitored test's time all tasks of the host stalled on I/O",
            None,
            |u| u.host.as_ref().and_then(|h| h.io_pressure),
        ),
    ];
    for (name, help, unit, get) in figures {
        per_label(
            reg,
            name,
            help,
            unit,
            "test",
            monitored
                .iter()
                .filter_map(|(r, u)| Some((test(r), get(u)?))),
        );
    }
    per_label(
        reg,
        "qorch_last_run_test_peak_processes",
        "Most processes each monitored test had at once in the newest run",
        None,
        "test",
        monitored
            .iter()
            .map(|(r, u)| (test(r), f64::from(u.peak_processes))),
    );
    Ok(())
}

/// Fills a registry from the store.
fn collect(state: &ApiState) -> Result<Registry, ApiError> {
    let mut reg = Registry::default();
    let store = state.store();
    let stats = store.stats()?;
    store_metrics(&mut reg, &stats);
    run_metrics(&mut reg, &store)?;
    Ok(reg)
}

/// `GET /metrics`: OpenMetrics text when asked for, else the Prometheus text format 0.0.4
/// (the same lines: the crate writes OpenMetrics, which the 0.0.4 parsers read).
pub(crate) async fn metrics(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let text = blocking(move || {
        let reg = collect(&state)?;
        let mut out = String::new();
        encode(&mut out, &reg).map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?;
        Ok(out)
    })
    .await?;
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let ct = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static(ct))], text).into_response())
}
