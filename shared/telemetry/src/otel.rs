//! OTLP export over gRPC, switched on by `OTEL_EXPORTER_OTLP_ENDPOINT`.

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, metrics::SdkMeterProvider, trace::SdkTracerProvider};

use crate::Metrics;

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
        let resource = Resource::builder()
            .with_attribute(KeyValue::new("service.name", service))
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| e.to_string())?;
        let tracer = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_batch_exporter(spans)
            .build();
        let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
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

    pub(crate) fn tracing_layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.tracer.tracer(self.service))
    }

    pub(crate) fn shutdown(self) {
        // Flushing can fail when the collector is gone; shutdown must not.
        let _ = self.tracer.shutdown();
        let _ = self.meter.shutdown();
    }
}
