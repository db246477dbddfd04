//! Security at every edge, with both binaries as real processes and real servers:
//! TLS and mutual TLS on the gRPC services (apply's TaskService, ingest's IngestService
//! as apply reaches it), bearer tokens on both, TLS towards Redis, and no secret in any
//! log even at RUST_LOG=debug.
//!
//! The certificates are made here with rcgen: a CA, a server certificate for
//! 127.0.0.1/localhost and a client certificate signed by it, and a second, unrelated CA
//! with its own client certificate for the "wrong certificate" cases.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use redis_sync_e2e::{ServiceProcess, free_addr, run_grpcurl, sync::standalone};
use redis_sync_proto::v1::{
    CheckStatus, CreateTaskRequest, ListTasksRequest, PrecheckItem, PrecheckResult,
    ProbeSourceRequest, RedisEndpoint, RedisTls, RunPrecheckRequest, SubscribeRequest, TaskSpec,
    ingest_service_client::IngestServiceClient, task_service_client::TaskServiceClient,
};
use redis_sync_testkit::{RedisServer, RedisVersion};
use tonic::{
    Code, Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const API_TOKEN: &str = "api-token-5f1c2e9d8b7a6c4e";
const INGEST_TOKEN: &str = "ingest-token-9a8b7c6d5e4f3a2b";
const WRONG_TOKEN: &str = "wrong-token-0123456789abcdef";
const SOURCE_PASSWORD: &str = "src-pass-7e6d5c4b3a29f8";
const DEST_PASSWORD: &str = "dst-pass-1a2b3c4d5e6f70";

/// Every process of this suite logs at debug level, so the secret check sees the most.
const DEBUG: &[(&str, &str)] = &[("RUST_LOG", "debug")];

// ---------------------------------------------------------------------------------------
// Certificates.

/// PEM files of one test PKI, in a directory removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("redis-sync-security-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("pki dir");
        let pki = Self { dir };

        let (ca_pem, ca) = new_ca("redis-sync test CA");
        pki.write("ca.pem", &ca_pem);
        let (cert, key) = new_leaf(&ca, "127.0.0.1", &["127.0.0.1", "localhost"]);
        pki.write("server.pem", &cert);
        pki.write("server.key", &key);
        let (cert, key) = new_leaf(&ca, "redis-sync-apply", &["redis-sync-apply"]);
        pki.write("client.pem", &cert);
        pki.write("client.key", &key);

        let (other_pem, other) = new_ca("unrelated CA");
        pki.write("other-ca.pem", &other_pem);
        let (cert, key) = new_leaf(&other, "redis-sync-apply", &["redis-sync-apply"]);
        pki.write("other-client.pem", &cert);
        pki.write("other-client.key", &key);
        pki
    }

    fn write(&self, name: &str, pem: &str) {
        std::fs::write(self.dir.join(name), pem).expect("write pem");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Path as a flag value.
    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("read pem")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let key = KeyPair::generate().expect("ca key");
    let cert = params.self_signed(&key).expect("self-sign ca");
    (cert.pem(), Issuer::new(params, key))
}

/// A certificate for `names` (IP addresses or DNS names) signed by `ca`: (cert, key) PEM.
fn new_leaf(ca: &Issuer<'static, KeyPair>, cn: &str, names: &[&str]) -> (String, String) {
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(names).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, ca).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

// ---------------------------------------------------------------------------------------
// gRPC clients.

/// TLS settings of a test client: the CA it trusts and, for mutual TLS, its certificate.
struct ClientTls<'a> {
    pki: &'a Pki,
    ca: &'a str,
    identity: Option<(&'a str, &'a str)>,
}

/// The error with its sources: tonic's top-level message alone is "transport error".
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// A connected channel to `addr`: https with `tls`, plaintext without.
async fn channel(addr: SocketAddr, tls: Option<&ClientTls<'_>>) -> Result<Channel, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| chain(&e))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    if let Some(t) = tls {
        let mut cfg =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(t.pki.read(t.ca)));
        if let Some((cert, key)) = t.identity {
            cfg = cfg.identity(Identity::from_pem(t.pki.read(cert), t.pki.read(key)));
        }
        ep = ep.tls_config(cfg).map_err(|e| chain(&e))?;
    }
    tokio::time::timeout(Duration::from_secs(10), ep.connect())
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| chain(&e))
}

/// `grpc.health.v1.Health/Check` of the whole server over `channel`.
async fn health(channel: Channel) -> Result<ServingStatus, String> {
    let mut client = HealthClient::new(channel);
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .map_err(|_| "health check timed out".to_owned())?
    .map_err(|s| format!("{:?}: {}", s.code(), chain(&s)))?;
    Ok(ServingStatus::try_from(answer.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

/// Connects and checks health in one go: what "a client reaches the server" means here.
async fn reach(addr: SocketAddr, tls: Option<&ClientTls<'_>>) -> Result<ServingStatus, String> {
    health(channel(addr, tls).await?).await
}

/// Waits until `svc` answers its health check SERVING over `tls` (or plaintext).
async fn wait_serving(svc: &ServiceProcess, tls: Option<&ClientTls<'_>>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match reach(svc.grpc, tls).await {
            Ok(ServingStatus::Serving) => return,
            Ok(other) => last = format!("{other:?}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{svc:?} never answered SERVING (last: {last}); its log:\n{}",
        svc.log()
    );
}

/// Adds `authorization: Bearer <token>` when a token is set.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    fn new(token: Option<&str>) -> Self {
        Self(token.map(|t| format!("Bearer {t}").parse().expect("header value")))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

type Tasks = TaskServiceClient<InterceptedService<Channel, Bearer>>;

fn tasks(channel: Channel, token: Option<&str>) -> Tasks {
    TaskServiceClient::with_interceptor(channel, Bearer::new(token))
}

// ---------------------------------------------------------------------------------------
// Tasks and prechecks.

/// A spec from `source` to `destination`, probed through apply's --ingest-endpoint.
fn task_spec(name: &str, source: RedisEndpoint, destination: RedisEndpoint) -> TaskSpec {
    redis_sync_e2e::sync::spec(name, source, destination)
}

/// Creates a task for `spec` and runs its precheck.
async fn precheck(client: &mut Tasks, spec: TaskSpec) -> PrecheckResult {
    let task = client
        .create_task(CreateTaskRequest { spec: Some(spec) })
        .await
        .expect("CreateTask")
        .into_inner()
        .task
        .expect("task");
    client
        .run_precheck(RunPrecheckRequest { id: task.id })
        .await
        .expect("RunPrecheck")
        .into_inner()
        .precheck
        .expect("precheck result")
}

fn item<'a>(result: &'a PrecheckResult, name: &str) -> &'a PrecheckItem {
    result
        .items
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("no precheck item {name}: {result:#?}"))
}

fn status(result: &PrecheckResult, name: &str) -> CheckStatus {
    CheckStatus::try_from(item(result, name).status).unwrap_or(CheckStatus::Unspecified)
}

#[track_caller]
fn assert_item(result: &PrecheckResult, name: &str, want: CheckStatus) {
    assert_eq!(
        status(result, name),
        want,
        "{name} should be {want:?}: {:#?}",
        item(result, name)
    );
}

// ---------------------------------------------------------------------------------------
// Redis servers.

/// A Redis 7.0 with a password, no TLS.
fn plain_redis(password: &str) -> RedisServer {
    RedisServer::builder(RedisVersion::V7_0)
        .password(password)
        .start()
        .expect("start redis")
}

/// A Redis 7.0 with a password and a TLS port that requires a client certificate
/// (`tls-auth-clients yes`) signed by the test CA; the returned address is the TLS port.
/// The harness keeps its plaintext port for its own client; everything under test uses
/// the TLS address only.
fn tls_redis(pki: &Pki, password: &str) -> (RedisServer, String) {
    let mut last = None;
    for _ in 0..5 {
        let tls_port = free_addr().port();
        let started = RedisServer::builder(RedisVersion::V7_0)
            .password(password)
            .config("tls-port", tls_port.to_string())
            .config("tls-cert-file", pki.arg("server.pem"))
            .config("tls-key-file", pki.arg("server.key"))
            .config("tls-ca-cert-file", pki.arg("ca.pem"))
            .config("tls-auth-clients", "yes")
            .start();
        match started {
            Ok(server) => return (server, format!("127.0.0.1:{tls_port}")),
            Err(e) => last = Some(e),
        }
    }
    panic!("cannot start a TLS redis-server: {:?}", last);
}

/// An endpoint for the TLS port `address` of a server from [`tls_redis`].
fn tls_endpoint(
    pki: &Pki,
    address: &str,
    password: &str,
    ca: &str,
    client_cert: bool,
) -> RedisEndpoint {
    let mut ep = standalone(address.to_owned());
    ep.password = password.to_owned();
    ep.tls = Some(RedisTls {
        enabled: true,
        ca_file: pki.arg(ca),
        cert_file: if client_cert {
            pki.arg("client.pem")
        } else {
            String::new()
        },
        key_file: if client_cert {
            pki.arg("client.key")
        } else {
            String::new()
        },
        ..Default::default()
    });
    ep
}

fn with_password(addr: String, password: &str) -> RedisEndpoint {
    let mut ep = standalone(addr);
    ep.password = password.to_owned();
    ep
}

// ---------------------------------------------------------------------------------------
// Logs.

/// Neither secret shows up in any process's log, which was written at debug level.
#[track_caller]
fn assert_no_secret_logged(processes: &[&ServiceProcess], secrets: &[&str]) {
    for p in processes {
        let log = p.log();
        assert!(
            log.contains("DEBUG"),
            "{p:?} did not log at debug level, so the check would prove nothing:\n{log}"
        );
        for secret in secrets {
            let lines: Vec<usize> = log
                .lines()
                .enumerate()
                .filter(|(_, l)| l.contains(secret))
                .map(|(n, _)| n + 1)
                .collect();
            assert!(
                lines.is_empty(),
                "{p:?} logged the secret {secret:?} on lines {lines:?}:\n{}",
                log.lines()
                    .enumerate()
                    .filter(|(n, _)| lines.contains(&(n + 1)))
                    .map(|(_, l)| l)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_service_over_tls_refuses_plaintext_and_unknown_cas() {
    let pki = Pki::new();
    let apply = ServiceProcess::apply_with_env(
        "http://127.0.0.1:1",
        &[
            "--tls-cert",
            &pki.arg("server.pem"),
            "--tls-key",
            &pki.arg("server.key"),
            "--api-token",
            API_TOKEN,
        ],
        DEBUG,
    )
    .expect("start apply");
    let trusted = ClientTls {
        pki: &pki,
        ca: "ca.pem",
        identity: None,
    };
    wait_serving(&apply, Some(&trusted)).await;

    // A client that trusts the CA gets through, token and all.
    let mut client = tasks(
        channel(apply.grpc, Some(&trusted)).await.unwrap(),
        Some(API_TOKEN),
    );
    client
        .list_tasks(ListTasksRequest::default())
        .await
        .expect("ListTasks over TLS with the token");

    // A plaintext client does not.
    let plain = reach(apply.grpc, None).await;
    assert!(plain.is_err(), "plaintext client got an answer: {plain:?}");
    let status = tasks(
        Endpoint::from_shared(format!("http://{}", apply.grpc))
            .unwrap()
            .connect_lazy(),
        Some(API_TOKEN),
    )
    .list_tasks(ListTasksRequest::default())
    .await
    .expect_err("plaintext ListTasks against TLS");
    assert_ne!(status.code(), Code::Ok);

    // Nor does one that trusts another CA: the handshake fails on the certificate.
    let other = ClientTls {
        pki: &pki,
        ca: "other-ca.pem",
        identity: None,
    };
    let err = reach(apply.grpc, Some(&other))
        .await
        .expect_err("a client trusting another CA got through");
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "expected a certificate error, got: {err}"
    );

    // grpcurl, as an operator would use it.
    let addr = apply.grpc.to_string();
    let (ok, out) = run_grpcurl(&["-cacert", &pki.arg("ca.pem"), &addr, "list"]);
    assert!(
        ok && out.contains("redis_sync.v1.TaskService"),
        "grpcurl -cacert: {out}"
    );
    let (ok, out) = run_grpcurl(&["-plaintext", &addr, "list"]);
    assert!(!ok, "grpcurl -plaintext against TLS succeeded: {out}");
    let (ok, out) = run_grpcurl(&["-cacert", &pki.arg("other-ca.pem"), &addr, "list"]);
    assert!(!ok, "grpcurl trusting another CA succeeded: {out}");

    assert_no_secret_logged(&[&apply], &[API_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_service_token_guards_calls_but_not_health() {
    let apply =
        ServiceProcess::apply_with_env("http://127.0.0.1:1", &["--api-token", API_TOKEN], DEBUG)
            .expect("start apply");
    wait_serving(&apply, None).await;
    let ch = channel(apply.grpc, None).await.unwrap();

    for token in [None, Some(WRONG_TOKEN)] {
        let status = tasks(ch.clone(), token)
            .list_tasks(ListTasksRequest::default())
            .await
            .expect_err("ListTasks without the right token");
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "token {token:?}: {status:?}"
        );
        assert!(!status.message().contains(API_TOKEN));
    }
    // The token without its scheme is refused too.
    let mut raw = Request::new(ListTasksRequest::default());
    raw.metadata_mut()
        .insert("authorization", API_TOKEN.parse().unwrap());
    let status = TaskServiceClient::new(ch.clone())
        .list_tasks(raw)
        .await
        .expect_err("a bare token");
    assert_eq!(status.code(), Code::Unauthenticated);

    tasks(ch.clone(), Some(API_TOKEN))
        .list_tasks(ListTasksRequest::default())
        .await
        .expect("ListTasks with the token");
    // Health (probes) and reflection (grpcurl's discovery) stay open.
    assert_eq!(health(ch).await, Ok(ServingStatus::Serving));
    let (ok, out) = run_grpcurl(&["-plaintext", &apply.grpc.to_string(), "list"]);
    assert!(ok && out.contains("redis_sync.v1.TaskService"), "{out}");

    assert_no_secret_logged(&[&apply], &[API_TOKEN, WRONG_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_token_admits_only_apply_with_the_token() {
    let source = plain_redis(SOURCE_PASSWORD);
    let destination = plain_redis(DEST_PASSWORD);
    let ingest = ServiceProcess::ingest_with_env(&["--auth-token", INGEST_TOKEN], DEBUG)
        .expect("start ingest");
    wait_serving(&ingest, None).await;

    // Without the token (or with another) ingest refuses every IngestService call.
    let ch = channel(ingest.grpc, None).await.unwrap();
    let probe = || ProbeSourceRequest {
        source: Some(with_password(source.addr(), SOURCE_PASSWORD)),
    };
    for token in [None, Some(WRONG_TOKEN)] {
        let mut client = IngestServiceClient::with_interceptor(ch.clone(), Bearer::new(token));
        let status = client
            .probe_source(probe())
            .await
            .expect_err("ProbeSource without the token");
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "token {token:?}: {status:?}"
        );
        let status = client
            .subscribe(SubscribeRequest::default())
            .await
            .expect_err("Subscribe without the token");
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "token {token:?}: {status:?}"
        );
    }
    // Health stays open for probes.
    assert_eq!(health(ch.clone()).await, Ok(ServingStatus::Serving));

    // apply with the matching --ingest-token gets through its precheck; with a wrong one
    // the ingest item fails and says why.
    let right = ServiceProcess::apply_with_env(
        &ingest.endpoint(),
        &["--ingest-token", INGEST_TOKEN],
        DEBUG,
    )
    .expect("start apply");
    let wrong =
        ServiceProcess::apply_with_env(&ingest.endpoint(), &["--ingest-token", WRONG_TOKEN], DEBUG)
            .expect("start apply");
    wait_serving(&right, None).await;
    wait_serving(&wrong, None).await;
    let spec = || {
        task_spec(
            "token",
            with_password(source.addr(), SOURCE_PASSWORD),
            with_password(destination.addr(), DEST_PASSWORD),
        )
    };
    let mut client = tasks(channel(right.grpc, None).await.unwrap(), None);
    let result = precheck(&mut client, spec()).await;
    assert_item(&result, "ingest_reachable", CheckStatus::Passed);
    assert_item(&result, "destination_reachable", CheckStatus::Passed);

    let mut client = tasks(channel(wrong.grpc, None).await.unwrap(), None);
    let result = precheck(&mut client, spec()).await;
    assert_item(&result, "ingest_reachable", CheckStatus::Failed);
    let reason = &item(&result, "ingest_reachable").reason;
    assert!(reason.contains("token"), "{reason}");
    assert!(
        !reason.contains(INGEST_TOKEN) && !reason.contains(WRONG_TOKEN),
        "{reason}"
    );

    assert_no_secret_logged(
        &[&ingest, &right, &wrong],
        &[INGEST_TOKEN, WRONG_TOKEN, SOURCE_PASSWORD, DEST_PASSWORD],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_between_apply_and_ingest() {
    let pki = Pki::new();
    let source = plain_redis(SOURCE_PASSWORD);
    let destination = plain_redis(DEST_PASSWORD);
    let ingest = ServiceProcess::ingest_with_env(
        &[
            "--tls-cert",
            &pki.arg("server.pem"),
            "--tls-key",
            &pki.arg("server.key"),
            "--tls-client-ca",
            &pki.arg("ca.pem"),
            "--auth-token",
            INGEST_TOKEN,
        ],
        DEBUG,
    )
    .expect("start ingest");
    let client_tls = ClientTls {
        pki: &pki,
        ca: "ca.pem",
        identity: Some(("client.pem", "client.key")),
    };
    wait_serving(&ingest, Some(&client_tls)).await;

    // Directly: without a client certificate, or with one from another CA, no call
    // gets an answer.
    for identity in [None, Some(("other-client.pem", "other-client.key"))] {
        let tls = ClientTls {
            pki: &pki,
            ca: "ca.pem",
            identity,
        };
        let err = reach(ingest.grpc, Some(&tls))
            .await
            .expect_err("a client without the right certificate got an answer");
        // The server's alert (CertificateRequired, UnknownCA) races with the request:
        // the client sees either the alert or a closed connection.
        assert!(
            err.contains("CertificateRequired")
                || err.contains("UnknownCA")
                || err.contains("connection closed")
                || err.contains("broken pipe"),
            "client certificate {identity:?}: expected a TLS failure, got: {err}"
        );
    }
    assert!(
        reach(ingest.grpc, None).await.is_err(),
        "plaintext got an answer"
    );

    // Through apply's precheck.
    let https = format!("https://{}", ingest.grpc);
    let base = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--ingest-token".into(),
            INGEST_TOKEN.into(),
            "--ingest-ca".into(),
            pki.arg("ca.pem"),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    let variants: [(&str, Vec<String>, CheckStatus); 3] = [
        (
            "with the client certificate",
            base(&[
                "--ingest-client-cert",
                &pki.arg("client.pem"),
                "--ingest-client-key",
                &pki.arg("client.key"),
            ]),
            CheckStatus::Passed,
        ),
        (
            "without a client certificate",
            base(&[]),
            CheckStatus::Failed,
        ),
        (
            "with a client certificate from another CA",
            base(&[
                "--ingest-client-cert",
                &pki.arg("other-client.pem"),
                "--ingest-client-key",
                &pki.arg("other-client.key"),
            ]),
            CheckStatus::Failed,
        ),
    ];
    let mut applies = Vec::new();
    for (what, args, want) in variants {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let apply = ServiceProcess::apply_with_env(&https, &args, DEBUG).expect("start apply");
        wait_serving(&apply, None).await;
        let mut client = tasks(channel(apply.grpc, None).await.unwrap(), None);
        let spec = task_spec(
            "mtls",
            with_password(source.addr(), SOURCE_PASSWORD),
            with_password(destination.addr(), DEST_PASSWORD),
        );
        let result = precheck(&mut client, spec).await;
        let ingest_item = item(&result, "ingest_reachable");
        assert_eq!(
            status(&result, "ingest_reachable"),
            want,
            "apply {what}: {ingest_item:#?}\napply log:\n{}",
            apply.log()
        );
        if want == CheckStatus::Failed {
            assert!(
                ingest_item.fix.contains("--ingest-client-cert"),
                "apply {what}: the fix should point at the TLS settings: {ingest_item:#?}"
            );
        }
        applies.push(apply);
    }

    let mut all: Vec<&ServiceProcess> = applies.iter().collect();
    all.push(&ingest);
    assert_no_secret_logged(&all, &[INGEST_TOKEN, SOURCE_PASSWORD, DEST_PASSWORD]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precheck_reaches_a_tls_destination() {
    let pki = Pki::new();
    let (destination, tls_addr) = tls_redis(&pki, DEST_PASSWORD);
    let source = plain_redis(SOURCE_PASSWORD);
    let apply =
        ServiceProcess::apply_with_env("http://127.0.0.1:1", &[], DEBUG).expect("start apply");
    wait_serving(&apply, None).await;
    let mut client = tasks(channel(apply.grpc, None).await.unwrap(), None);
    let src = || with_password(source.addr(), SOURCE_PASSWORD);

    // The right CA and client certificate: reachable, and the other destination items run.
    let result = precheck(
        &mut client,
        task_spec(
            "tls-dest",
            src(),
            tls_endpoint(&pki, &tls_addr, DEST_PASSWORD, "ca.pem", true),
        ),
    )
    .await;
    assert_item(&result, "destination_reachable", CheckStatus::Passed);
    assert_item(&result, "destination_role", CheckStatus::Passed);

    // Another CA: refused, and the reason names the certificate problem.
    let result = precheck(
        &mut client,
        task_spec(
            "tls-dest-wrong-ca",
            src(),
            tls_endpoint(&pki, &tls_addr, DEST_PASSWORD, "other-ca.pem", true),
        ),
    )
    .await;
    assert_item(&result, "destination_reachable", CheckStatus::Failed);
    let dest = item(&result, "destination_reachable");
    assert!(
        dest.reason.contains("TLS") && dest.reason.contains("UnknownIssuer"),
        "the reason should name the certificate problem: {dest:#?}"
    );
    assert!(dest.fix.contains("ca_file"), "{dest:#?}");

    // The server requires a client certificate (tls-auth-clients yes).
    let result = precheck(
        &mut client,
        task_spec(
            "tls-dest-no-client-cert",
            src(),
            tls_endpoint(&pki, &tls_addr, DEST_PASSWORD, "ca.pem", false),
        ),
    )
    .await;
    assert_item(&result, "destination_reachable", CheckStatus::Failed);
    let dest = item(&result, "destination_reachable");
    assert!(dest.reason.contains("CertificateRequired"), "{dest:#?}");
    assert!(dest.fix.contains("cert_file"), "{dest:#?}");

    // Plaintext to the TLS port gets nowhere either.
    let result = precheck(
        &mut client,
        task_spec(
            "plain-to-tls-port",
            src(),
            with_password(tls_addr.clone(), DEST_PASSWORD),
        ),
    )
    .await;
    assert_item(&result, "destination_reachable", CheckStatus::Failed);

    // A CA file that does not exist is named.
    let mut missing = tls_endpoint(&pki, &tls_addr, DEST_PASSWORD, "ca.pem", true);
    if let Some(t) = missing.tls.as_mut() {
        t.ca_file = pki.arg("missing.pem");
    }
    let result = precheck(
        &mut client,
        task_spec("tls-dest-missing-ca", src(), missing),
    )
    .await;
    assert_item(&result, "destination_reachable", CheckStatus::Failed);
    let dest = item(&result, "destination_reachable");
    assert!(
        dest.reason.contains("tls.ca_file") && dest.reason.contains("missing.pem"),
        "{dest:#?}"
    );
    assert!(dest.fix.contains("spec.destination.tls"), "{dest:#?}");

    drop(destination);
    assert_no_secret_logged(&[&apply], &[SOURCE_PASSWORD, DEST_PASSWORD]);
}

/// Ingest's probe of a TLS source (spec.source.tls), as apply's precheck shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precheck_reaches_a_tls_source_through_ingest() {
    let pki = Pki::new();
    let (source, tls_addr) = tls_redis(&pki, SOURCE_PASSWORD);
    let destination = plain_redis(DEST_PASSWORD);
    let ingest = ServiceProcess::ingest_with_env(&[], DEBUG).expect("start ingest");
    let apply =
        ServiceProcess::apply_with_env(&ingest.endpoint(), &[], DEBUG).expect("start apply");
    wait_serving(&ingest, None).await;
    wait_serving(&apply, None).await;
    let mut client = tasks(channel(apply.grpc, None).await.unwrap(), None);
    let dst = || with_password(destination.addr(), DEST_PASSWORD);

    let result = precheck(
        &mut client,
        task_spec(
            "tls-source",
            tls_endpoint(&pki, &tls_addr, SOURCE_PASSWORD, "ca.pem", true),
            dst(),
        ),
    )
    .await;
    assert_item(&result, "ingest_reachable", CheckStatus::Passed);
    assert_eq!(
        status(&result, "source_reachable"),
        CheckStatus::Passed,
        "{:#?}\ningest log:\n{}",
        item(&result, "source_reachable"),
        ingest.log()
    );
    assert_item(&result, "source_psync_allowed", CheckStatus::Passed);

    let result = precheck(
        &mut client,
        task_spec(
            "tls-source-wrong-ca",
            tls_endpoint(&pki, &tls_addr, SOURCE_PASSWORD, "other-ca.pem", true),
            dst(),
        ),
    )
    .await;
    assert_item(&result, "source_reachable", CheckStatus::Failed);

    drop(source);
    assert_no_secret_logged(&[&ingest, &apply], &[SOURCE_PASSWORD, DEST_PASSWORD]);
}

/// The whole path with every protection on at once: mutual TLS and a token between
/// apply and ingest, TLS and a token on TaskService, TLS to the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_on_at_once() {
    let pki = Pki::new();
    let source = plain_redis(SOURCE_PASSWORD);
    let (destination, tls_addr) = tls_redis(&pki, DEST_PASSWORD);
    let ingest = ServiceProcess::ingest_with_env(
        &[
            "--tls-cert",
            &pki.arg("server.pem"),
            "--tls-key",
            &pki.arg("server.key"),
            "--tls-client-ca",
            &pki.arg("ca.pem"),
            "--auth-token",
            INGEST_TOKEN,
        ],
        DEBUG,
    )
    .expect("start ingest");
    let apply = ServiceProcess::apply_with_env(
        &format!("https://{}", ingest.grpc),
        &[
            "--tls-cert",
            &pki.arg("server.pem"),
            "--tls-key",
            &pki.arg("server.key"),
            "--tls-client-ca",
            &pki.arg("ca.pem"),
            "--api-token",
            API_TOKEN,
            "--ingest-token",
            INGEST_TOKEN,
            "--ingest-ca",
            &pki.arg("ca.pem"),
            "--ingest-client-cert",
            &pki.arg("client.pem"),
            "--ingest-client-key",
            &pki.arg("client.key"),
        ],
        DEBUG,
    )
    .expect("start apply");
    let mtls = ClientTls {
        pki: &pki,
        ca: "ca.pem",
        identity: Some(("client.pem", "client.key")),
    };
    wait_serving(&ingest, Some(&mtls)).await;
    wait_serving(&apply, Some(&mtls)).await;

    let mut client = tasks(
        channel(apply.grpc, Some(&mtls)).await.unwrap(),
        Some(API_TOKEN),
    );
    let result = precheck(
        &mut client,
        task_spec(
            "everything",
            with_password(source.addr(), SOURCE_PASSWORD),
            tls_endpoint(&pki, &tls_addr, DEST_PASSWORD, "ca.pem", true),
        ),
    )
    .await;
    assert_item(&result, "ingest_reachable", CheckStatus::Passed);
    assert_item(&result, "destination_reachable", CheckStatus::Passed);

    // TaskService over mutual TLS: a client without a certificate is refused.
    let no_cert = ClientTls {
        pki: &pki,
        ca: "ca.pem",
        identity: None,
    };
    assert!(reach(apply.grpc, Some(&no_cert)).await.is_err());

    drop(destination);
    assert_no_secret_logged(
        &[&ingest, &apply],
        &[API_TOKEN, INGEST_TOKEN, SOURCE_PASSWORD, DEST_PASSWORD],
    );
}

/// Runs a task from `source` to `destination` (endpoints as the task names them; `src`
/// and `dst` are the same servers for the harness's own plaintext client) and waits
/// until the full copy and a write after it arrived.
async fn sync_through(
    src: &RedisServer,
    source: RedisEndpoint,
    dst: &RedisServer,
    destination: RedisEndpoint,
) {
    let ingest = ServiceProcess::ingest_with_env(&["--auth-token", INGEST_TOKEN], DEBUG)
        .expect("start ingest");
    let apply = ServiceProcess::apply_with_env(
        &ingest.endpoint(),
        &["--ingest-token", INGEST_TOKEN],
        DEBUG,
    )
    .expect("start apply");
    wait_serving(&ingest, None).await;
    wait_serving(&apply, None).await;

    for i in 0..20 {
        src.cmd_ok(&["SET", &format!("before:{i}"), &format!("v{i}")])
            .expect("write source");
    }
    let mut client = redis_sync_e2e::sync::task_client(apply.endpoint()).await;
    let spec = task_spec("tls-sync", source, destination);
    let id = redis_sync_e2e::sync::create_and_start(&mut client, spec).await;
    src.cmd_ok(&["SET", "after", "streamed"])
        .expect("write source");

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let before = dst.cmd_str(&["GET", "before:19"]).expect("read");
        let after = dst.cmd_str(&["GET", "after"]).expect("read");
        if before.as_str() == Some("v19") && after.as_str() == Some("streamed") {
            break;
        }
        if Instant::now() > deadline {
            let task = redis_sync_e2e::sync::get(&mut client, &id).await;
            panic!(
                "the destination never got the data ({before:?}, {after:?}); task: {task:#?}\ningest log:\n{}\napply log:\n{}",
                ingest.log(),
                apply.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = (0..20)
        .filter(|i| {
            dst.cmd_str(&["GET", &format!("before:{i}")])
                .expect("read")
                .as_str()
                == Some(&format!("v{i}"))
        })
        .count();
    assert_eq!(
        before, 20,
        "keys of the full copy missing on the destination"
    );

    redis_sync_e2e::sync::stop(&mut client, &id).await;
    assert_no_secret_logged(
        &[&ingest, &apply],
        &[INGEST_TOKEN, SOURCE_PASSWORD, DEST_PASSWORD],
    );
}

/// Data actually flows into a TLS destination: the full copy and the writes after it
/// go through the writer's TLS connections (CA, client certificate, password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_into_a_tls_destination() {
    let pki = Pki::new();
    let source = plain_redis(SOURCE_PASSWORD);
    let (destination, tls_addr) = tls_redis(&pki, DEST_PASSWORD);
    sync_through(
        &source,
        with_password(source.addr(), SOURCE_PASSWORD),
        &destination,
        tls_endpoint(&pki, &tls_addr, DEST_PASSWORD, "ca.pem", true),
    )
    .await;
}

/// Data flows from a TLS source: ingest's replica link (snapshot and stream) runs over
/// TLS with the CA and client certificate the task names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_from_a_tls_source() {
    let pki = Pki::new();
    let (source, tls_addr) = tls_redis(&pki, SOURCE_PASSWORD);
    let destination = plain_redis(DEST_PASSWORD);
    sync_through(
        &source,
        tls_endpoint(&pki, &tls_addr, SOURCE_PASSWORD, "ca.pem", true),
        &destination,
        with_password(destination.addr(), DEST_PASSWORD),
    )
    .await;
}

/// A token that cannot be safe stops the binary at start, naming the flag and not the
/// value.
#[test]
fn weak_tokens_stop_the_binaries_at_start() {
    for (bin, flag, env) in [
        ("redis-sync-ingest", "--auth-token", "REDIS_SYNC_AUTH_TOKEN"),
        ("redis-sync-apply", "--api-token", "REDIS_SYNC_API_TOKEN"),
        (
            "redis-sync-apply",
            "--ingest-token",
            "REDIS_SYNC_INGEST_TOKEN",
        ),
    ] {
        for weak in ["short-secret", "has a space in it here"] {
            for via_env in [false, true] {
                let mut cmd =
                    std::process::Command::new(redis_sync_e2e::binary(bin).expect("binary"));
                if via_env {
                    cmd.env(env, weak);
                } else {
                    cmd.args([flag, weak]);
                }
                let out = cmd.output().expect("run");
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(2), "{bin} {flag}: {stderr}");
                assert!(stderr.contains(flag), "{bin}: should name {flag}: {stderr}");
                assert!(!stderr.contains(weak), "{bin} printed the token: {stderr}");
            }
        }
    }
}
