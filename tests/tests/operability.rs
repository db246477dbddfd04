//! What an operator meets first: both binaries start, answer health checks and
//! reflection (grpcurl), serve Prometheus metrics, stop cleanly on SIGTERM, and refuse a
//! bad setting at start with a message that names it.

use std::{io::Read, io::Write, net::TcpStream, process::Command, time::Duration};

use redis_sync_e2e::{ServiceProcess, binary, run_grpcurl};

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

async fn check_operable(mut svc: ServiceProcess, service: &str, message: &str) {
    svc.wait_healthy().await.expect("healthy");
    let addr = svc.grpc.to_string();

    let (ok, out) = run_grpcurl(&["-plaintext", &addr, "list"]);
    assert!(ok, "grpcurl list failed: {out}");
    for s in [
        service,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        let listed = out.lines().filter(|l| l.trim() == s).count();
        assert_eq!(listed, 1, "grpcurl list should name {s} once: {out}");
    }

    let (ok, out) = run_grpcurl(&["-plaintext", &addr, "describe", message]);
    assert!(ok, "grpcurl describe failed: {out}");
    assert!(
        out.contains("//"),
        "describe shows no field documentation: {out}"
    );

    let (ok, out) = run_grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    assert!(ok && out.contains("SERVING"), "health check: {out}");
    let (ok, out) = run_grpcurl(&[
        "-plaintext",
        "-d",
        &format!("{{\"service\":\"{service}\"}}"),
        &addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(
        ok && out.contains("SERVING"),
        "per-service health check: {out}"
    );

    let metrics = http_get(svc.metrics, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("text/plain; version=0.0.4"), "{metrics}");

    let (status, took) = svc
        .terminate(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit within 5 s of SIGTERM; log:\n{}", svc.log()));
    assert!(
        status.success(),
        "exit status {status:?} after SIGTERM; log:\n{}",
        svc.log()
    );
    assert!(took < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_is_operable() {
    let svc = ServiceProcess::ingest(&[]).expect("start ingest");
    check_operable(
        svc,
        "redis_sync.v1.IngestService",
        "redis_sync.v1.SubscribeRequest",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_is_operable() {
    let svc = ServiceProcess::apply("http://127.0.0.1:1", &[]).expect("start apply");
    check_operable(svc, "redis_sync.v1.TaskService", "redis_sync.v1.TaskSpec").await;
}

fn refuses(bin: &str, args: &[&str], envs: &[(&str, &str)], setting: &str) {
    let out = Command::new(binary(bin).expect("binary"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{bin} {args:?} should exit 2; stderr: {stderr}"
    );
    assert!(
        stderr.contains(setting),
        "{bin}: error should name {setting}: {stderr}"
    );
}

#[test]
fn bad_settings_stop_the_binaries_at_start() {
    refuses(
        "redis-sync-ingest",
        &["--spool-max-bytes", "12"],
        &[],
        "--spool-max-bytes",
    );
    refuses(
        "redis-sync-ingest",
        &["--spool-max-bytes", "lots"],
        &[],
        "--spool-max-bytes",
    );
    refuses(
        "redis-sync-ingest",
        &[],
        &[("REDIS_SYNC_METRICS_LISTEN", "nowhere")],
        "REDIS_SYNC_METRICS_LISTEN",
    );
    refuses(
        "redis-sync-ingest",
        &["--listen", "localhost"],
        &[],
        "--listen",
    );
    refuses(
        "redis-sync-apply",
        &["--ingest-endpoint", "ftp://x"],
        &[],
        "--ingest-endpoint",
    );
    refuses(
        "redis-sync-apply",
        &[],
        &[("REDIS_SYNC_LOG_FORMAT", "xml")],
        "--log-format",
    );
    refuses(
        "redis-sync-apply",
        &["--api-token", "short"],
        &[],
        "--api-token",
    );
    refuses(
        "redis-sync-apply",
        &["--tls-cert", "/nonexistent.pem"],
        &[],
        "--tls-key",
    );
    refuses(
        "redis-sync-apply",
        &[
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            "/nonexistent.key",
        ],
        &[],
        "--tls-cert",
    );
}
