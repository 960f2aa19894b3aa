//! `/metrics`: the Prometheus text exposition, written by the `prometheus-client` crate from a
//! registry filled at each scrape from the store.

use std::sync::atomic::AtomicU64;

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

/// Fills a registry from the store.
fn collect(state: &ApiState) -> Result<Registry, ApiError> {
    let mut reg = Registry::default();
    let store = state.store();
    let stats = store.stats()?;
    store_metrics(&mut reg, &stats);
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
