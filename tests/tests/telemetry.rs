//! OpenTelemetry export as an operator switches it on: with `OTEL_EXPORTER_OTLP_ENDPOINT`
//! set, both binaries send their gRPC calls as spans and their metrics registry as
//! metrics to an OTLP collector, under their own `service.name`, while they run and in the
//! final flush at SIGTERM. A collector that is down or hung costs nothing but the
//! telemetry: the services keep serving and still exit promptly.
//!
//! The collector is in-process: a tonic server implementing the OTLP/gRPC trace and
//! metrics services, recording what arrives.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    common::v1::{KeyValue, any_value},
    metrics::v1::{metric::Data, number_data_point},
    resource::v1::Resource,
    trace::v1::span::SpanKind,
};
use redis_sync_e2e::{ServiceProcess, binary, free_addr, sync::standalone};
use redis_sync_proto::v1::{
    ListTasksRequest, ProbeSourceRequest, ingest_service_client::IngestServiceClient,
    task_service_client::TaskServiceClient,
};
use tonic::{
    Request, Response, Status,
    transport::{Server, server::TcpIncoming},
};

/// How long anything the test waits for may take.
const PATIENCE: Duration = Duration::from_secs(20);

/// What the collector received.
#[derive(Debug, Default)]
struct Seen {
    /// (service.name, span name, span kind).
    spans: BTreeSet<(String, String, i32)>,
    /// (service.name, metric name).
    metrics: BTreeSet<(String, String)>,
    /// `redis_sync_build_info` points: (service.name, version label, value).
    build_info: BTreeSet<(String, String, i64)>,
    /// (service.name, resource attribute "key=value") for string attributes.
    resources: BTreeSet<(String, String)>,
}

impl Seen {
    fn has_span(&self, service: &str, name: &str) -> bool {
        self.spans.iter().any(|(s, n, _)| s == service && n == name)
    }

    /// `redis_sync_build_info{version="..."} 1` arrived from `service`.
    fn has_build_info(&self, service: &str) -> bool {
        self.build_info
            .iter()
            .any(|(s, version, v)| s == service && !version.is_empty() && *v == 1)
    }
}

#[derive(Clone, Default)]
struct Collector {
    seen: Arc<Mutex<Seen>>,
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

impl Collector {
    /// Starts a collector on a free loopback port; returns it and its endpoint URL.
    fn start() -> (Self, String) {
        let incoming =
            TcpIncoming::bind("127.0.0.1:0".parse().expect("address")).expect("bind the collector");
        let addr = incoming.local_addr().expect("collector address");
        let collector = Self::default();
        let server = Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector.clone()))
            .serve_with_incoming(incoming);
        tokio::spawn(async move {
            if let Err(e) = server.await {
                panic!("collector stopped: {e}");
            }
        });
        (collector, format!("http://{addr}"))
    }

    fn with_seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Polls until `done` holds, failing with what did arrive after [`PATIENCE`].
    async fn wait_for(&self, what: &str, svc: &ServiceProcess, done: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !self.with_seen(&done) {
            assert!(
                Instant::now() < deadline,
                "no {what} within {PATIENCE:?}; the collector received {:#?}\nservice log:\n{}",
                self.seen.lock().unwrap_or_else(PoisonError::into_inner),
                svc.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn record_resource(seen: &mut Seen, resource: Option<&Resource>) -> String {
        let attrs = resource
            .map(|r| r.attributes.as_slice())
            .unwrap_or_default();
        let service = string_attr(attrs, "service.name").unwrap_or_default();
        for kv in attrs {
            if let Some(v) = string_attr(attrs, &kv.key) {
                seen.resources
                    .insert((service.clone(), format!("{}={v}", kv.key)));
            }
        }
        service
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        for rs in request.into_inner().resource_spans {
            let service = Self::record_resource(&mut seen, rs.resource.as_ref());
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                seen.spans.insert((service.clone(), span.name, span.kind));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        for rm in request.into_inner().resource_metrics {
            let service = Self::record_resource(&mut seen, rm.resource.as_ref());
            for metric in rm.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                seen.metrics.insert((service.clone(), metric.name.clone()));
                if let (true, Some(Data::Gauge(gauge))) =
                    (metric.name == "redis_sync_build_info", &metric.data)
                {
                    for point in &gauge.data_points {
                        let value = match point.value {
                            Some(number_data_point::Value::AsInt(v)) => v,
                            Some(number_data_point::Value::AsDouble(v)) => v as i64,
                            None => continue,
                        };
                        let version = string_attr(&point.attributes, "version").unwrap_or_default();
                        seen.build_info.insert((service.clone(), version, value));
                    }
                }
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// The environment that points a service at `endpoint`, plus `extra`.
fn otel_env<'a>(endpoint: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        // Spans of health probes are debug-level; keep the test independent of the
        // caller's RUST_LOG.
        ("RUST_LOG", "info"),
    ];
    env.extend_from_slice(extra);
    env
}

/// Calls ProbeSource on a closed port. Any answer from ingest will do (its verdict on the
/// source is not this suite's business); a transport failure will not.
async fn probe(client: &mut IngestServiceClient<tonic::transport::Channel>) {
    let request = ProbeSourceRequest {
        source: Some(standalone(free_addr().to_string())),
    };
    match client.probe_source(request).await {
        Ok(_) => {}
        Err(status) if status.code() != tonic::Code::Unavailable => {}
        Err(status) => panic!("ingest did not answer ProbeSource: {status}"),
    }
}

/// SIGTERM, then the exit an orchestrator expects: status 0 within 5 s.
fn stop(svc: &mut ServiceProcess) -> Duration {
    let (status, took) = svc
        .terminate(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit within 5 s of SIGTERM; log:\n{}", svc.log()));
    assert!(
        status.success(),
        "exit status {status:?} after SIGTERM; log:\n{}",
        svc.log()
    );
    took
}

/// Metric family names on the service's Prometheus endpoint.
fn prometheus_families(svc: &ServiceProcess) -> BTreeSet<String> {
    let mut s = std::net::TcpStream::connect(svc.metrics).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nhost: test\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_exports_its_calls_as_spans_and_its_metrics() {
    let (collector, endpoint) = Collector::start();
    // Metrics every 500 ms, spans only in the final flush (the batch delay outlasts the
    // test): the periodic export and the one at shutdown are both exercised.
    let mut svc = ServiceProcess::ingest_with_env(
        &[],
        &otel_env(
            &endpoint,
            &[
                ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
                ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
            ],
        ),
    )
    .expect("start ingest");
    svc.wait_healthy().await.expect("healthy");

    let mut client = IngestServiceClient::connect(svc.endpoint())
        .await
        .expect("connect to ingest");
    probe(&mut client).await;
    drop(client);

    collector
        .wait_for(
            "redis_sync_build_info = 1 from redis-sync-ingest while it runs",
            &svc,
            |s| s.has_build_info("redis-sync-ingest"),
        )
        .await;
    assert!(
        !collector.with_seen(|s| s.has_span(
            "redis-sync-ingest",
            "redis_sync.v1.IngestService/ProbeSource"
        )),
        "the span arrived before the exit: OTEL_BSP_SCHEDULE_DELAY was not honoured, so \
         this test would not check the flush at SIGTERM"
    );

    stop(&mut svc);
    // Everything the process exported had been answered, so recorded, before it exited.
    collector.with_seen(|seen| {
        assert!(
            seen.spans.contains(&(
                "redis-sync-ingest".into(),
                "redis_sync.v1.IngestService/ProbeSource".into(),
                SpanKind::Server as i32
            )),
            "the call's server span was not flushed at SIGTERM; received {seen:#?}\nlog:\n{}",
            svc.log()
        );
        assert!(
            !seen
                .spans
                .iter()
                .any(|(_, name, _)| name.starts_with("grpc.health.v1.Health/")),
            "health probes produced spans at RUST_LOG=info: {seen:#?}"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_exports_its_calls_as_spans_and_its_metrics() {
    let (collector, endpoint) = Collector::start();
    // Spans every 200 ms, metrics only in the final flush (default interval: 60 s).
    let mut svc = ServiceProcess::apply_with_env(
        "http://127.0.0.1:1",
        &[],
        &otel_env(
            &endpoint,
            &[
                ("OTEL_BSP_SCHEDULE_DELAY", "200"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment.name=e2e",
                ),
            ],
        ),
    )
    .expect("start apply");
    svc.wait_healthy().await.expect("healthy");

    let mut client = TaskServiceClient::connect(svc.endpoint())
        .await
        .expect("connect to apply");
    client
        .list_tasks(ListTasksRequest::default())
        .await
        .expect("ListTasks");
    drop(client);

    collector
        .wait_for(
            "ListTasks span from redis-sync-apply while it runs",
            &svc,
            |s| s.has_span("redis-sync-apply", "redis_sync.v1.TaskService/ListTasks"),
        )
        .await;
    let families = prometheus_families(&svc);
    assert!(
        families.contains("redis_sync_build_info"),
        "/metrics lacks redis_sync_build_info: {families:?}"
    );

    stop(&mut svc);
    collector.with_seen(|seen| {
        let exported: BTreeSet<&str> = seen
            .metrics
            .iter()
            .filter(|(s, _)| s == "redis-sync-apply")
            .map(|(_, m)| m.as_str())
            .collect();
        for family in &families {
            assert!(
                exported.contains(family.as_str()),
                "{family} is on /metrics but was not in the OTLP flush at SIGTERM; \
                 exported: {exported:?}\nlog:\n{}",
                svc.log()
            );
        }
        assert!(
            seen.has_build_info("redis-sync-apply"),
            "no redis_sync_build_info = 1: {seen:#?}"
        );
        assert!(
            seen.resources.contains(&(
                "redis-sync-apply".into(),
                "deployment.environment.name=e2e".into()
            )),
            "OTEL_RESOURCE_ATTRIBUTES was dropped: {:?}",
            seen.resources
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_is_reported_and_does_not_hurt_the_service() {
    let closed = format!("http://{}", free_addr());
    let mut svc = ServiceProcess::ingest_with_env(
        &[],
        &otel_env(
            &closed,
            &[
                ("OTEL_BSP_SCHEDULE_DELAY", "200"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ],
        ),
    )
    .expect("start ingest");
    svc.wait_healthy().await.expect("starts and serves");

    let mut client = IngestServiceClient::connect(svc.endpoint())
        .await
        .expect("connect to ingest");
    // Keep calling while the exports fail, until the failure shows in the log.
    let deadline = Instant::now() + PATIENCE;
    loop {
        probe(&mut client).await;
        if svc.log().contains("ExportError") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failed exports are not reported in the log; log:\n{}",
            svc.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client);
    stop(&mut svc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_collector_does_not_delay_shutdown() {
    // Accepts connections and never answers: every export waits for its timeout (10 s).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hung = format!("http://{}", listener.local_addr().expect("address"));
    let accepted = Arc::new(AtomicUsize::new(0));
    tokio::spawn({
        let accepted = accepted.clone();
        async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
                accepted.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let mut svc = ServiceProcess::apply_with_env(
        "http://127.0.0.1:1",
        &[],
        &otel_env(
            &hung,
            &[
                ("OTEL_BSP_SCHEDULE_DELAY", "200"),
                ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ],
        ),
    )
    .expect("start apply");
    svc.wait_healthy().await.expect("starts and serves");

    let mut client = TaskServiceClient::connect(svc.endpoint())
        .await
        .expect("connect to apply");
    client
        .list_tasks(ListTasksRequest::default())
        .await
        .expect("ListTasks");
    // Both exporters (spans and metrics) connected and are now stuck in an export.
    let deadline = Instant::now() + PATIENCE;
    while accepted.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the exporters never connected; log:\n{}",
            svc.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::timeout(
        Duration::from_secs(2),
        client.list_tasks(ListTasksRequest::default()),
    )
    .await
    .expect("ListTasks is not slowed down by a hung export")
    .expect("ListTasks");
    drop(client);

    let took = stop(&mut svc);
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn an_unusable_endpoint_stops_the_binary_at_start_naming_the_variable() {
    let spool = std::env::temp_dir().join(format!(
        "redis-sync-e2e-{}-otel-refused",
        std::process::id()
    ));
    for endpoint in ["https://collector:4317", "collector:4317"] {
        let mut child = std::process::Command::new(binary("redis-sync-ingest").expect("binary"))
            .args(["--spool-dir", &spool.display().to_string()])
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn ingest");
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ingest started with OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("read stderr");
        assert!(!status.success(), "{endpoint}: {status:?}");
        assert!(
            stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && stderr.contains("http://"),
            "{endpoint}: the error should name the variable and what it takes: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&spool);
}
