//! OTLP export over gRPC, switched on by `OTEL_EXPORTER_OTLP_ENDPOINT`.
//!
//! The exporters resolve their endpoints themselves, so the per-signal variables
//! (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `..._METRICS_ENDPOINT`), `OTEL_EXPORTER_OTLP_TIMEOUT`
//! and `OTEL_EXPORTER_OTLP_HEADERS` work as the OpenTelemetry specification says. The SDK
//! reads `OTEL_BSP_SCHEDULE_DELAY` (span batches, default 5 s) and
//! `OTEL_METRIC_EXPORT_INTERVAL` (metrics, default 60 s).

use std::{sync::mpsc, time::Duration};

use opentelemetry::{Key, KeyValue, trace::TracerProvider as _};
use opentelemetry_sdk::{Resource, metrics::SdkMeterProvider, trace::SdkTracerProvider};
use tracing_subscriber::{Layer as _, filter::FilterFn};

use crate::Metrics;

/// How long shutdown may spend flushing the last spans and metrics. Both are flushed at
/// once; an unreachable collector must not hold a stopping process past what an
/// orchestrator waits before SIGKILL.
const FLUSH_BUDGET: Duration = Duration::from_secs(2);

pub(crate) struct OtelProviders {
    tracer: SdkTracerProvider,
    meter: SdkMeterProvider,
    service: &'static str,
}

impl OtelProviders {
    pub(crate) fn new(
        service: &'static str,
        endpoint: &str,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        if !endpoint.starts_with("http://") {
            return Err(if endpoint.starts_with("https://") {
                "TLS to the OTLP endpoint is not supported: export to a collector over \
                 http:// (a sidecar, or one inside the mesh) and let it forward over TLS"
                    .to_owned()
            } else {
                "expected http://host:port (OTLP over gRPC), e.g. http://otel-collector:4317"
                    .to_owned()
            });
        }
        let resource = resource(service);
        // No `with_endpoint`: the exporters read OTEL_EXPORTER_OTLP_ENDPOINT themselves and
        // let a per-signal variable override it.
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| e.to_string())?;
        let tracer = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_batch_exporter(spans)
            .build();
        let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| e.to_string())?;
        let meter = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_periodic_exporter(metric_exporter)
            .build();
        metrics.register_otel(&opentelemetry::metrics::MeterProvider::meter(
            &meter, service,
        ));
        Ok(Self {
            tracer,
            meter,
            service,
        })
    }

    /// The layer that turns `tracing` spans into OpenTelemetry spans.
    ///
    /// The exporter's own machinery (tonic, hyper, h2, tower and the OpenTelemetry crates)
    /// is kept out: its spans would be exported by the export they describe, and at
    /// `RUST_LOG=trace` every export would produce the next one.
    pub(crate) fn tracing_layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.tracer(self.service))
            .with_filter(FilterFn::new(|meta| !is_export_machinery(meta.target())))
    }

    /// Flushes and stops both pipelines, together, for at most [`FLUSH_BUDGET`].
    pub(crate) fn shutdown(self) {
        // Each shutdown blocks until its exporter is done; run them side by side on their
        // own threads (the exports need this process's Tokio runtime to make progress, so
        // the caller must not be one of its workers for long) and stop waiting at the
        // budget. Flushing can fail when the collector is gone; shutdown must not.
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let tracer = self.tracer;
        let meter = self.meter;
        let spawned = [
            std::thread::Builder::new()
                .name("otel-flush-spans".into())
                .spawn({
                    let done = done_tx.clone();
                    move || {
                        let _ = tracer.shutdown_with_timeout(FLUSH_BUDGET);
                        let _ = done.send(());
                    }
                })
                .is_ok(),
            std::thread::Builder::new()
                .name("otel-flush-metrics".into())
                .spawn(move || {
                    let _ = meter.shutdown_with_timeout(FLUSH_BUDGET);
                    let _ = done_tx.send(());
                })
                .is_ok(),
        ];
        let deadline = std::time::Instant::now() + FLUSH_BUDGET;
        for _ in spawned.iter().filter(|ok| **ok) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if done_rx.recv_timeout(left).is_err() {
                return;
            }
        }
    }
}

/// The resource every span and metric carries. `service.name` is the binary's name unless
/// the operator set one (`OTEL_SERVICE_NAME`, or `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`); other `OTEL_RESOURCE_ATTRIBUTES` are kept.
fn resource(service: &'static str) -> Resource {
    let detected = Resource::builder().build();
    let named_by_operator = detected
        .get(&Key::from_static_str("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    let builder = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if named_by_operator {
        builder.build()
    } else {
        builder.with_service_name(service).build()
    }
}

/// Targets whose spans and events belong to the export path itself.
fn is_export_machinery(target: &str) -> bool {
    const CRATES: [&str; 9] = [
        "h2",
        "hyper",
        "hyper_util",
        "tonic",
        "tower",
        "opentelemetry",
        "opentelemetry_sdk",
        "opentelemetry_otlp",
        "opentelemetry-otlp",
    ];
    let krate = target.split("::").next().unwrap_or(target);
    CRATES.contains(&krate)
}

#[cfg(test)]
mod tests {
    use super::is_export_machinery;

    #[test]
    fn export_machinery_is_recognised_by_crate() {
        for t in [
            "h2::proto::connection",
            "hyper_util::client::legacy::pool",
            "tonic::transport::channel",
            "opentelemetry_sdk",
            "opentelemetry-otlp",
            "tower::buffer::worker",
        ] {
            assert!(is_export_machinery(t), "{t}");
        }
        for t in [
            "redis_sync_apply::runner",
            "redis_sync_service",
            "tonic_health_probe",
            "hyperloglog",
        ] {
            assert!(!is_export_machinery(t), "{t}");
        }
    }
}
