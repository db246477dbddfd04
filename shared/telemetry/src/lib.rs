//! Logging, tracing and metrics shared by both redis-sync services.
//!
//! One call, [`init`], sets up `tracing` (pretty or JSON logs filtered by `RUST_LOG`) and,
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OTLP export of spans and metrics. Metrics
//! live in a small [`Metrics`] registry that both the Prometheus `/metrics` endpoint
//! ([`serve_metrics`]) and the OTLP exporter read, so a number is defined once.
//!
//! OTLP goes over gRPC to an `http://` endpoint and follows the standard variables:
//! `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME` (default: the binary's name),
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_SCHEDULE_DELAY` (spans, default 5 s) and
//! `OTEL_METRIC_EXPORT_INTERVAL` (metrics, default 60 s). Every gRPC call is a server span
//! (see `redis_sync_service::server_builder`); failed exports are logged, never fatal.
//!
//! This crate does not decide what is measured: the services register their own metrics,
//! and [`init`] adds `redis_sync_build_info`.

mod metrics;
mod otel;

use std::str::FromStr;

pub use metrics::{Counter, Gauge, Metrics, serve_metrics};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, coloured when stderr is a terminal.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pretty" => Ok(Self::Pretty),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format {other:?}: expected \"pretty\" or \"json\""
            )),
        }
    }
}

/// Errors setting up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` does not parse.
    #[error("RUST_LOG is invalid: {0}")]
    Filter(String),
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter (OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}): {message}")]
    Otlp {
        /// The endpoint from the environment.
        endpoint: String,
        /// What failed.
        message: String,
    },
    /// A global subscriber was already installed.
    #[error("tracing is already initialised: {0}")]
    AlreadyInit(String),
}

/// Keeps exporters alive; flushes them when dropped at shutdown.
#[must_use = "telemetry stops exporting when the guard is dropped"]
pub struct TelemetryGuard {
    otel: Option<otel::OtelProviders>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("otlp", &self.otel.is_some())
            .finish()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.otel.take() {
            p.shutdown();
        }
    }
}

/// Installs the global tracing subscriber and, if configured, OTLP export, and registers
/// `redis_sync_build_info` in `metrics`.
///
/// Must be called from inside a Tokio runtime when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
/// (the gRPC exporter needs it), and the returned guard dropped while that runtime still
/// runs, outside its worker threads (at the end of `#[tokio::main]`'s `main`): the final
/// flush goes through it. The flush takes at most two seconds, collector or not.
pub fn init(
    service: &'static str,
    format: LogFormat,
    metrics: &Metrics,
) -> Result<TelemetryGuard, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.is_empty() => {
            EnvFilter::from_str(&s).map_err(|e| TelemetryError::Filter(e.to_string()))?
        }
        _ => EnvFilter::new("info"),
    };
    // Present in every process, so a scrape or an OTLP export is never empty and the
    // version that runs is visible next to the numbers it produces.
    metrics
        .gauge(
            "redis_sync_build_info",
            "Always 1; the version label is the running build's version.",
            &[("version", env!("CARGO_PKG_VERSION"))],
        )
        .set(1);
    let otel = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(
            otel::OtelProviders::new(service, &endpoint, metrics)
                .map_err(|message| TelemetryError::Otlp { endpoint, message })?,
        ),
        _ => None,
    };
    let otel_layer = otel.as_ref().map(|p| p.tracing_layer());
    let fmt_pretty = (format == LogFormat::Pretty)
        .then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let fmt_json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(otel_layer)
        .with(fmt_pretty)
        .with(fmt_json)
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInit(e.to_string()))?;
    Ok(TelemetryGuard { otel })
}
