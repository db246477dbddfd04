//! A small metrics registry: counters and gauges with labels, rendered as Prometheus
//! text and exported over OTLP from the same numbers.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    future::Future,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use opentelemetry::{KeyValue, metrics::Meter};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

type Labels = Vec<(String, String)>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

struct Family {
    name: String,
    help: String,
    kind: Kind,
    series: Mutex<BTreeMap<Labels, Arc<AtomicI64>>>,
}

impl Family {
    fn snapshot(&self) -> Vec<(Labels, i64)> {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        series
            .iter()
            .map(|(l, v)| (l.clone(), v.load(Ordering::Relaxed)))
            .collect()
    }
}

#[derive(Default)]
struct Registry {
    families: Mutex<Vec<Arc<Family>>>,
    meter: Mutex<Option<Meter>>,
}

/// The process's metrics. Cheap to clone; all clones share the numbers.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Registry>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// A monotonically increasing count.
#[derive(Clone, Debug)]
pub struct Counter(Arc<AtomicI64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0
            .fetch_add(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        u64::try_from(self.0.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

/// A value that goes up and down.
#[derive(Clone, Debug)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Metrics {
    /// A new, empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter `name{labels}`, created on first use.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        Counter(self.series(name, help, Kind::Counter, labels))
    }

    /// The gauge `name{labels}`, created on first use.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        Gauge(self.series(name, help, Kind::Gauge, labels))
    }

    fn series(
        &self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
    ) -> Arc<AtomicI64> {
        let family = {
            let mut families = self
                .inner
                .families
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match families.iter().find(|f| f.name == name) {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(Family {
                        name: name.to_owned(),
                        help: help.to_owned(),
                        kind,
                        series: Mutex::default(),
                    });
                    families.push(f.clone());
                    if let Some(meter) = self
                        .inner
                        .meter
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .as_ref()
                    {
                        observe(meter, f.clone());
                    }
                    f
                }
            }
        };
        let key: Labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        family
            .series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_default()
            .clone()
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let families = self
            .inner
            .families
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut out = String::new();
        for f in families {
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help.replace('\n', " "));
            let _ = writeln!(out, "# TYPE {} {kind}", f.name);
            for (labels, value) in f.snapshot() {
                out.push_str(&f.name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, v)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let v = v
                            .replace('\\', "\\\\")
                            .replace('"', "\\\"")
                            .replace('\n', "\\n");
                        let _ = write!(out, "{k}=\"{v}\"");
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {value}");
            }
        }
        out
    }

    pub(crate) fn register_otel(&self, meter: &Meter) {
        // Hold the family list while the meter is installed, so a family created
        // meanwhile is either in the list (observed here) or sees the meter (observed by
        // `series`): never neither.
        let families = self
            .inner
            .families
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for f in families.iter() {
            observe(meter, f.clone());
        }
        *self
            .inner
            .meter
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(meter.clone());
    }
}

/// Registers `family` with `meter` as an observable instrument read at each export.
///
/// Counters become monotonic cumulative sums, so a backend computes rates from them as it
/// does from the Prometheus counters on `/metrics`; gauges stay gauges.
fn observe(meter: &Meter, family: Arc<Family>) {
    let name = family.name.clone();
    let help = family.help.clone();
    let attrs = |labels: Labels| -> Vec<KeyValue> {
        labels
            .into_iter()
            .map(|(k, v)| KeyValue::new(k, v))
            .collect()
    };
    match family.kind {
        Kind::Counter => {
            let _counter = meter
                .u64_observable_counter(name)
                .with_description(help)
                .with_callback(move |obs| {
                    for (labels, v) in family.snapshot() {
                        obs.observe(u64::try_from(v).unwrap_or(0), &attrs(labels));
                    }
                })
                .build();
        }
        Kind::Gauge => {
            let _gauge = meter
                .i64_observable_gauge(name)
                .with_description(help)
                .with_callback(move |obs| {
                    for (labels, v) in family.snapshot() {
                        obs.observe(v, &attrs(labels));
                    }
                })
                .build();
        }
    }
}

/// Serves `GET /metrics` (Prometheus text) and `GET /healthz` until `shutdown` completes.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    // A slow or silent client must not hold a task forever.
                    let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &metrics)).await;
                });
            }
        }
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 16 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split(|b| *b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        (b"GET", b"/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        (b"GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_escaped_labels() {
        let m = Metrics::new();
        m.counter("events_total", "Events sent.", &[("shard", "a\"b")])
            .add(3);
        m.gauge("lag_bytes", "Lag.", &[]).set(-2);
        let text = m.render();
        assert!(text.contains("# TYPE events_total counter"));
        assert!(text.contains("events_total{shard=\"a\\\"b\"} 3"));
        assert!(text.contains("lag_bytes -2"));
    }

    #[test]
    fn otlp_sees_counters_as_monotonic_sums_and_gauges_as_gauges() {
        use opentelemetry::metrics::MeterProvider as _;
        use opentelemetry_sdk::metrics::{
            InMemoryMetricExporter, PeriodicReader, SdkMeterProvider,
            data::{AggregatedMetrics, MetricData},
        };

        let m = Metrics::new();
        // One family before the meter exists, one after: both must be exported.
        m.counter("early_total", "Before OTLP.", &[("shard", "a")])
            .add(5);
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        m.register_otel(&provider.meter("test"));
        m.gauge("late_bytes", "After OTLP.", &[]).set(-7);

        provider.force_flush().unwrap();
        let exported = exporter.get_finished_metrics().unwrap();
        let rm = exported.last().expect("one export");
        let metrics: Vec<_> = rm.scope_metrics().flat_map(|s| s.metrics()).collect();
        let early = metrics
            .iter()
            .find(|x| x.name() == "early_total")
            .expect("counter exported");
        match early.data() {
            AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                assert!(sum.is_monotonic());
                let point = sum.data_points().next().expect("a point");
                assert_eq!(point.value(), 5);
                assert!(
                    point
                        .attributes()
                        .any(|kv| kv.key.as_str() == "shard" && kv.value.as_str() == "a")
                );
            }
            other => panic!("counter exported as {other:?}"),
        }
        let late = metrics
            .iter()
            .find(|x| x.name() == "late_bytes")
            .expect("gauge exported");
        match late.data() {
            AggregatedMetrics::I64(MetricData::Gauge(g)) => {
                assert_eq!(g.data_points().next().expect("a point").value(), -7);
            }
            other => panic!("gauge exported as {other:?}"),
        }
        provider.shutdown().unwrap();
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let m = Metrics::new();
        m.counter("up_total", "Up.", &[]).inc();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_metrics(listener, m, async {
            let _ = rx.await;
        }));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.contains("up_total 1"), "{out}");
        tx.send(()).unwrap();
        server.await.unwrap();
    }
}
