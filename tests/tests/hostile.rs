//! Hostile gRPC input against both binaries as real processes (issue #9): oversized and
//! malformed requests, lying length prefixes, unknown enum values, absurd limits and
//! positions. Whoever can reach a port can send these, by mistake or on purpose, so each
//! must end in a clear gRPC status within a bounded time — never a panic, a hang, a
//! transport failure or a huge allocation — and the service must stay healthy and keep
//! its tasks and spools.
//!
//! Request-shape validation is unit-tested in `services/apply/tests/control_plane.rs`; this
//! suite covers what only the whole process shows: the HTTP/2 and gRPC framing layers, the
//! memory the process takes, and its log.

use std::{
    future::{Future, poll_fn},
    net::SocketAddr,
    pin::Pin,
    time::{Duration, Instant},
};

use redis_sync_e2e::{
    ServiceProcess, free_addr, rss,
    sync::{spec, standalone},
};
use redis_sync_proto::v1::{
    AcknowledgeRequest, ConflictMode, CreateTaskRequest, GetTaskRequest, HeartbeatOptions,
    InstanceMode, ListTasksRequest, Position, ProbeErrorKind, ProbeSourceRequest, RedisEndpoint,
    RedisTls, ShardPosition, SubscribeRequest, SubscribeResponse, SyncType, TaskSpec,
    VerifyTaskRequest, ingest_service_client::IngestServiceClient,
    task_service_client::TaskServiceClient,
};
use redis_sync_testkit::{RedisServer, RedisVersion};
use tonic::{
    Code, Status, Streaming,
    codegen::{Body as _, Service, http},
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Longest any hostile call may take. The slowest legitimate answer here is a probe of an
/// address that drops packets: ingest's connect timeout is 5 s.
const BOUND: Duration = Duration::from_secs(20);

/// Peak resident memory a service may reach in these tests. Both idle at a few tens of
/// MiB; a trusted 4 GiB length prefix, or a 10 MiB request buffered several times, would
/// blow through it.
const MAX_PEAK_RSS: u64 = 128 << 20;

/// `f`, failing the test when it takes longer than [`BOUND`]: a hang is a bug here.
async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {BOUND:?}"))
}

/// The error status of a call that must be refused with one of `codes`.
fn refused<T: std::fmt::Debug>(
    what: &str,
    result: Result<tonic::Response<T>, Status>,
    codes: &[Code],
) -> Status {
    match result {
        Ok(r) => {
            let answer: String = format!("{r:?}").chars().take(500).collect();
            panic!("{what}: accepted, expected one of {codes:?}: {answer}…")
        }
        Err(s) => {
            assert!(
                codes.contains(&s.code()),
                "{what}: expected one of {codes:?}, got {:?}: {}",
                s.code(),
                s.message()
            );
            // A status carries a short explanation, not the hostile input echoed back:
            // a huge grpc-message header is itself a failure on many clients.
            assert!(
                s.message().len() < 4096,
                "{what}: a {} byte status message",
                s.message().len()
            );
            s
        }
    }
}

/// Refused with INVALID_ARGUMENT naming `field`.
fn invalid<T: std::fmt::Debug>(
    what: &str,
    result: Result<tonic::Response<T>, Status>,
    field: &str,
) {
    let s = refused(what, result, &[Code::InvalidArgument]);
    assert!(
        s.message().contains(field),
        "{what}: the error should name {field}: {}",
        s.message()
    );
}

async fn channel(svc: &ServiceProcess) -> Channel {
    within(
        "connect",
        Endpoint::from_shared(svc.endpoint())
            .expect("endpoint")
            .connect(),
    )
    .await
    .expect("connect")
}

/// The process is running, answers its health check SERVING, never panicked, and its
/// memory stayed small.
async fn assert_unharmed(svc: &mut ServiceProcess, what: &str) {
    assert!(svc.is_running(), "{what} exited; its log:\n{}", svc.log());
    let mut health = HealthClient::new(channel(svc).await);
    let status = within(
        "health check",
        health.check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("health check")
    .into_inner()
    .status;
    assert_eq!(status, ServingStatus::Serving as i32, "{what} health");
    let log = svc.log();
    assert!(!log.contains("panicked"), "{what} panicked:\n{log}");
    let pid = svc.pid().expect("running");
    let (_, peak) = rss(pid).expect("rss");
    assert!(
        peak < MAX_PEAK_RSS,
        "{what} peaked at {} MiB of resident memory",
        peak >> 20
    );
}

/// apply, healthy. No ingest is needed: nothing here starts a task.
async fn start_apply() -> ServiceProcess {
    started(|| ServiceProcess::apply("http://127.0.0.1:1", &[]).expect("start apply")).await
}

/// ingest, healthy.
async fn start_ingest() -> ServiceProcess {
    started(|| ServiceProcess::ingest(&[]).expect("start ingest")).await
}

/// Whether `svc` answers its health check SERVING right now.
async fn serving(svc: &ServiceProcess) -> bool {
    let Ok(Ok(channel)) = tokio::time::timeout(
        Duration::from_secs(1),
        Endpoint::from_shared(svc.endpoint())
            .expect("endpoint")
            .connect(),
    )
    .await
    else {
        return false;
    };
    let mut health = HealthClient::new(channel);
    let check = health.check(HealthCheckRequest {
        service: String::new(),
    });
    matches!(
        tokio::time::timeout(Duration::from_secs(1), check).await,
        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
    )
}

/// Starts a service with `make` and waits until it is healthy. The harness probes its
/// ports free just before the service binds them; should a parallel test take one in
/// between anyway, the service exits at once with "Address already in use" and is
/// started again.
async fn started(make: impl Fn() -> ServiceProcess) -> ServiceProcess {
    for _ in 0..3 {
        let mut svc = make();
        let deadline = Instant::now() + Duration::from_secs(30);
        while svc.is_running() && Instant::now() < deadline {
            if serving(&svc).await {
                return svc;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = svc.log();
        assert!(
            !svc.is_running() && log.contains("Address already in use"),
            "{svc:?} did not become healthy; its log:\n{log}"
        );
    }
    panic!("no free ports in three tries");
}

fn good_spec(name: &str) -> TaskSpec {
    spec(
        name,
        standalone("127.0.0.1:6379".into()),
        standalone("127.0.0.1:6380".into()),
    )
}

/// Creates a task that must survive everything a test throws at the service.
async fn create_witness(client: &mut TaskServiceClient<Channel>) -> String {
    within(
        "CreateTask",
        client.create_task(CreateTaskRequest {
            spec: Some(good_spec("witness")),
        }),
    )
    .await
    .expect("CreateTask")
    .into_inner()
    .task
    .expect("task")
    .id
}

/// The witness is still stored and a new task can still be created and read.
async fn assert_tasks_intact(client: &mut TaskServiceClient<Channel>, witness: &str) {
    let task = within(
        "GetTask",
        client.get_task(GetTaskRequest {
            id: witness.to_owned(),
        }),
    )
    .await
    .expect("GetTask of the witness")
    .into_inner()
    .task
    .expect("task");
    assert_eq!(task.spec.expect("spec").name, "witness");
    let id = create_witness(client).await;
    let task = within("GetTask", client.get_task(GetTaskRequest { id }))
        .await
        .expect("GetTask of a new task")
        .into_inner()
        .task
        .expect("task");
    assert_eq!(task.spec.expect("spec").name, "witness");
}

// ---------------------------------------------------------------------------------------
// Raw gRPC: bodies no generated client would send.

/// One gRPC message frame: flag byte, 4-byte big-endian length, payload. The body travels
/// as a `String`, the one `http_body::Body` this crate can build without depending on
/// http-body itself; payloads stay below 128 bytes so that the length bytes are ASCII.
fn grpc_frame(flag: u8, payload: &str) -> String {
    assert!(flag < 0x80 && payload.len() < 0x80);
    let mut s = String::new();
    s.push(char::from(flag));
    s.push_str("\0\0\0");
    s.push(char::from(
        u8::try_from(payload.len()).expect("short payload"),
    ));
    s.push_str(payload);
    s
}

/// Sends `body` as the request body of `path` over `channel` and returns the gRPC status
/// of the answer (OK included). A transport error fails the test: hostile input must be
/// answered, not make the connection fall over.
async fn raw_call(channel: &Channel, path: &str, body: String) -> Status {
    let mut svc = channel.clone();
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(body))
        .expect("request");
    let call = async {
        poll_fn(|cx| svc.poll_ready(cx))
            .await
            .expect("channel ready");
        let response = svc
            .call(request)
            .await
            .unwrap_or_else(|e| panic!("{path}: transport failure: {e:?}"));
        assert_eq!(response.status(), http::StatusCode::OK, "{path}");
        if let Some(status) = Status::from_header_map(response.headers()) {
            return status; // trailers-only answer
        }
        let mut body = response.into_body();
        loop {
            match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                Some(Ok(frame)) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return Status::from_header_map(&trailers)
                            .unwrap_or_else(|| panic!("{path}: trailers without grpc-status"));
                    }
                }
                Some(Err(e)) => panic!("{path}: the answer broke off: {e:?}"),
                None => panic!("{path}: the answer ended without trailers"),
            }
        }
    };
    within(path, call).await
}

const TASK_METHODS: &[&str] = &[
    "CreateTask",
    "GetTask",
    "ListTasks",
    "StartTask",
    "PauseTask",
    "ResumeTask",
    "StopTask",
    "DeleteTask",
    "RunPrecheck",
    "WatchTask",
    "VerifyTask",
];
const INGEST_METHODS: &[&str] = &["ProbeSource", "Subscribe", "Acknowledge"];

/// Protobuf that no message decodes, each a different way to be broken.
const BROKEN_PROTOBUF: &[(&str, &str)] = &[
    ("field number 0", "\0"),
    ("wire type 7", "\x0f"),
    ("a length past the end", "\x0a\x7f"),
    // One byte of a two-byte UTF-8 character: a string field that is not UTF-8, or a
    // nested message whose first varint never ends.
    ("half a character", "\x0a\x01\u{e9}"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_a_decode_error_from_every_method() {
    let mut apply = start_apply().await;
    let mut ingest = start_ingest().await;
    let mut tasks = TaskServiceClient::new(channel(&apply).await);
    let witness = create_witness(&mut tasks).await;

    let targets = [
        (&apply, "redis_sync.v1.TaskService", TASK_METHODS),
        (&ingest, "redis_sync.v1.IngestService", INGEST_METHODS),
    ];
    for (svc, service, methods) in targets {
        let ch = channel(svc).await;
        for method in methods {
            let path = format!("/{service}/{method}");
            for (how, payload) in BROKEN_PROTOBUF {
                let status = raw_call(&ch, &path, grpc_frame(0, payload)).await;
                assert!(
                    matches!(status.code(), Code::Internal | Code::InvalidArgument)
                        && status.message().contains("decode"),
                    "{path} with {how}: expected a decode error, got {:?}: {}",
                    status.code(),
                    status.message()
                );
            }
            // gRPC framing errors rather than protobuf ones: the compressed flag without a
            // grpc-encoding, an undefined flag, a frame header cut short, no message.
            for (how, body) in [
                ("a compressed flag without grpc-encoding", grpc_frame(1, "")),
                ("flag 2", grpc_frame(2, "")),
                ("half a frame header", "\0\0".to_owned()),
                ("an empty body", String::new()),
            ] {
                let status = raw_call(&ch, &path, body).await;
                assert!(
                    status.code() != Code::Ok && status.code() != Code::Unknown,
                    "{path} with {how}: expected a clear error, got {:?}: {}",
                    status.code(),
                    status.message()
                );
            }
        }
    }

    assert_unharmed(&mut apply, "apply").await;
    assert_unharmed(&mut ingest, "ingest").await;
    assert_tasks_intact(&mut tasks, &witness).await;
}

/// A client that speaks HTTP/2 by hand, to send a gRPC length prefix and then nothing:
/// tonic's own client always sends as many bytes as the prefix says.
mod raw_h2 {
    use std::net::SocketAddr;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const RST_STREAM: u8 = 3;
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    const GOAWAY: u8 = 7;
    const END_STREAM: u8 = 0x1;
    const ACK: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;

    /// How the server ended the request stream.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Ending {
        /// A complete answer (headers with END_STREAM: a gRPC status).
        Answered,
        /// RST_STREAM with this error code.
        Reset(u32),
        /// GOAWAY with this error code.
        GoAway(u32),
        /// The connection was closed.
        Closed,
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).expect("frame length");
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
    }

    /// HPACK "literal without indexing", name from the static table (index < 15), no
    /// Huffman: the simplest header encoding a server must accept.
    fn indexed_name(index: u8, value: &str) -> Vec<u8> {
        let mut out = vec![index, u8::try_from(value.len()).expect("short value")];
        out.extend(value.as_bytes());
        out
    }

    fn new_name(name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![0, u8::try_from(name.len()).expect("short name")];
        out.extend(name.as_bytes());
        out.push(u8::try_from(value.len()).expect("short value"));
        out.extend(value.as_bytes());
        out
    }

    /// Opens a connection, starts a call of `path` on stream 1 and sends `data` without
    /// ending the stream. Returns the connection, ready for [`ending`].
    pub async fn start_call(addr: SocketAddr, path: &str, data: &[u8]) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
        block.extend(indexed_name(4, path)); // :path
        block.extend(indexed_name(1, &addr.to_string())); // :authority
        block.extend([0x0f, 0x10, 16]); // content-type (static index 31), 16 bytes:
        block.extend(b"application/grpc");
        block.extend(new_name("te", "trailers"));
        out.extend(frame(HEADERS, END_HEADERS, 1, &block));
        out.extend(frame(DATA, 0, 1, data));
        s.write_all(&out).await.expect("write");
        s
    }

    /// Reads until the server ends stream 1 (or the connection), acknowledging its
    /// SETTINGS and PINGs as a live client does.
    pub async fn ending(s: &mut TcpStream) -> Ending {
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return Ending::Closed;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return Ending::Closed;
            }
            let code = |p: &[u8], at: usize| {
                p.get(at..at + 4)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            };
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    let _ = s.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
                }
                PING if flags & ACK == 0 => {
                    let _ = s.write_all(&frame(PING, ACK, 0, &payload)).await;
                }
                HEADERS if stream == 1 && flags & END_STREAM != 0 => return Ending::Answered,
                RST_STREAM if stream == 1 => return Ending::Reset(code(&payload, 0)),
                GOAWAY => return Ending::GoAway(code(&payload, 4)),
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_length_prefix_is_refused_at_once() {
    let mut apply = start_apply().await;
    let mut ingest = start_ingest().await;
    let mut tasks = TaskServiceClient::new(channel(&apply).await);
    let witness = create_witness(&mut tasks).await;

    // 0xEFBFBF7F bytes (~3.7 GiB) announced; U+FFFF is EF BF BF in UTF-8.
    let lie_then_end = "\0\u{ffff}\x7f".to_owned();
    // 0xFFFFFFFF bytes announced, then the stream stays open: a server that waited for
    // the message, or reserved room for it, would hang or die here.
    let lie = [0u8, 0xff, 0xff, 0xff, 0xff];
    let targets = [
        (&apply, "/redis_sync.v1.TaskService/CreateTask"),
        (&apply, "/redis_sync.v1.TaskService/WatchTask"),
        (&ingest, "/redis_sync.v1.IngestService/Subscribe"),
        (&ingest, "/redis_sync.v1.IngestService/Acknowledge"),
    ];
    for (svc, path) in targets {
        let status = raw_call(&channel(svc).await, path, lie_then_end.clone()).await;
        assert!(
            matches!(
                status.code(),
                Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
            ),
            "{path}: a 3.7 GiB length prefix got {:?}: {}",
            status.code(),
            status.message()
        );

        let mut held = raw_h2::start_call(svc.grpc, path, &lie).await;
        let ending = within(path, raw_h2::ending(&mut held)).await;
        assert!(
            matches!(ending, raw_h2::Ending::Answered | raw_h2::Ending::Reset(_)),
            "{path}: a 4 GiB length prefix on an open stream ended with {ending:?}"
        );
        // And a client that vanishes right after the prefix.
        drop(raw_h2::start_call(svc.grpc, path, &lie).await);
    }

    assert_unharmed(&mut apply, "apply").await;
    assert_unharmed(&mut ingest, "ingest").await;
    assert_tasks_intact(&mut tasks, &witness).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_and_the_service_goes_on() {
    let mut apply = start_apply().await;
    let mut ingest = start_ingest().await;
    let mut tasks = TaskServiceClient::new(channel(&apply).await);
    let mut probe = IngestServiceClient::new(channel(&ingest).await);
    let witness = create_witness(&mut tasks).await;
    let mib = |n: usize| "x".repeat(n << 20);

    // Under the 4 MiB message limit: decoded, then refused by validation, which must not
    // echo the megabytes back.
    let mut s = good_spec("");
    s.name = mib(3);
    invalid(
        "a 3 MiB name",
        within(
            "CreateTask",
            tasks.create_task(CreateTaskRequest { spec: Some(s) }),
        )
        .await,
        "spec.name",
    );
    invalid(
        "a 1 MiB id",
        within("GetTask", tasks.get_task(GetTaskRequest { id: mib(1) })).await,
        "id",
    );
    invalid(
        "a 1 MiB page token",
        within(
            "ListTasks",
            tasks.list_tasks(ListTasksRequest {
                page_token: mib(1),
                ..Default::default()
            }),
        )
        .await,
        "page_token",
    );

    // Over it: refused from the length prefix, before the body is read.
    let too_big = [
        Code::OutOfRange,
        Code::ResourceExhausted,
        Code::InvalidArgument,
    ];
    let mut s = good_spec("");
    s.name = mib(10);
    refused(
        "a 10 MiB CreateTask",
        within(
            "CreateTask",
            tasks.create_task(CreateTaskRequest { spec: Some(s) }),
        )
        .await,
        &too_big,
    );
    refused(
        "a 10 MiB GetTask",
        within("GetTask", tasks.get_task(GetTaskRequest { id: mib(10) })).await,
        &too_big,
    );
    let mut source = standalone("127.0.0.1:6379".into());
    source.password = mib(10);
    refused(
        "a 10 MiB ProbeSource",
        within(
            "ProbeSource",
            probe.probe_source(ProbeSourceRequest {
                source: Some(source),
            }),
        )
        .await,
        &too_big,
    );

    // 1 MiB of metadata never reaches the service: HTTP/2 (hyper's CONTINUATION flood
    // guard) closes the connection with GOAWAY ENHANCE_YOUR_CALM, which the client reports
    // as RESOURCE_EXHAUSTED or as a transport error depending on timing. Only this
    // connection goes; the service and its other clients carry on (checked below).
    let mut request = tonic::Request::new(GetTaskRequest { id: "x".into() });
    request
        .metadata_mut()
        .insert("x-junk", mib(1).parse().expect("ASCII metadata"));
    let answer = within("1 MiB of metadata", tasks.get_task(request)).await;
    assert!(answer.is_err(), "1 MiB of metadata was accepted");

    assert_unharmed(&mut apply, "apply").await;
    assert_unharmed(&mut ingest, "ingest").await;
    assert_tasks_intact(&mut tasks, &witness).await;
}

// ---------------------------------------------------------------------------------------
// Unknown enum values and absurd limits in well-formed messages.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_enums_and_absurd_limits_are_refused_by_name() {
    let mut apply = start_apply().await;
    let mut tasks = TaskServiceClient::new(channel(&apply).await);
    let witness = create_witness(&mut tasks).await;
    let kib = |n: usize| "a".repeat(n << 10);

    type Edit = Box<dyn Fn(&mut TaskSpec)>;
    let source = |f: fn(&mut RedisEndpoint)| -> Edit {
        Box::new(move |s: &mut TaskSpec| f(s.source.as_mut().expect("source")))
    };
    let heartbeat = |interval_ms: u32| -> Edit {
        Box::new(move |s: &mut TaskSpec| {
            s.heartbeat = Some(HeartbeatOptions {
                interval_ms,
                ..Default::default()
            });
        })
    };
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "conflict_mode 99",
            Box::new(|s| s.conflict_mode = 99),
            "spec.conflict_mode",
        ),
        (
            "conflict_mode -1",
            Box::new(|s| s.conflict_mode = -1),
            "spec.conflict_mode",
        ),
        (
            "source mode 42",
            source(|e| e.mode = 42),
            "spec.source.mode",
        ),
        (
            "destination mode -7",
            Box::new(|s| s.destination.as_mut().expect("destination").mode = -7),
            "spec.destination.mode",
        ),
        (
            "sync_type 99",
            Box::new(|s| s.sync_type = 99),
            "spec.sync_type",
        ),
        (
            "database u32::MAX",
            Box::new(|s| s.databases = vec![u32::MAX]),
            "spec.databases[0]",
        ),
        (
            "500k databases",
            Box::new(|s| s.databases = (0..500_000).collect()),
            "spec.databases[16]",
        ),
        (
            "db 0 mapped to 1000000",
            Box::new(|s| {
                s.db_mapping.insert(0, 1_000_000);
            }),
            "spec.db_mapping[0]",
        ),
        (
            "db u32::MAX mapped to 0",
            Box::new(|s| {
                s.db_mapping.insert(u32::MAX, 0);
            }),
            "spec.db_mapping[4294967295]",
        ),
        (
            "heartbeat every 1 ms",
            heartbeat(1),
            "spec.heartbeat.interval_ms",
        ),
        (
            "heartbeat every u32::MAX ms",
            heartbeat(u32::MAX),
            "spec.heartbeat.interval_ms",
        ),
        (
            "a 100 KiB heartbeat prefix",
            Box::new(move |s| {
                s.heartbeat = Some(HeartbeatOptions {
                    key_prefix: "p".repeat(100 << 10),
                    ..Default::default()
                });
            }),
            "spec.heartbeat.key_prefix",
        ),
        (
            "a 100 KiB address",
            Box::new(move |s| {
                s.source.as_mut().expect("source").address = format!("{}:6379", kib(100));
            }),
            "spec.source.address",
        ),
        (
            "a 100 KiB address without a port",
            Box::new(move |s| s.destination.as_mut().expect("destination").address = kib(100)),
            "spec.destination.address",
        ),
        (
            "a 100 KiB user name",
            Box::new(move |s| s.source.as_mut().expect("source").username = kib(100)),
            "spec.source.username",
        ),
        (
            "a 1 MiB password",
            Box::new(move |s| s.source.as_mut().expect("source").password = kib(1024)),
            "spec.source.password",
        ),
        (
            "a 100 KiB CA path",
            Box::new(move |s| {
                s.source.as_mut().expect("source").tls = Some(RedisTls {
                    enabled: true,
                    ca_file: format!("/{}", kib(100)),
                    ..Default::default()
                });
            }),
            "spec.source.tls",
        ),
        (
            "a 100 KiB ingest endpoint",
            Box::new(move |s| s.ingest_endpoint = format!("http://{}:1", kib(100))),
            "spec.ingest_endpoint",
        ),
    ];
    for (what, edit, field) in cases {
        let mut s = good_spec("hostile");
        edit(&mut s);
        let result = within(what, tasks.create_task(CreateTaskRequest { spec: Some(s) })).await;
        invalid(what, result, field);
    }

    // Accepted because harmless: a heartbeat interval of 0 and a sync type of 0 mean the
    // defaults (1000 ms, full and incremental), and a page size of u32::MAX is capped at
    // 500 tasks.
    let mut s = good_spec("default heartbeat");
    s.heartbeat = Some(HeartbeatOptions::default());
    s.sync_type = SyncType::Unspecified as i32;
    within(
        "heartbeat 0",
        tasks.create_task(CreateTaskRequest { spec: Some(s) }),
    )
    .await
    .expect("interval 0 is the default");
    let page = within(
        "ListTasks",
        tasks.list_tasks(ListTasksRequest {
            page_size: u32::MAX,
            ..Default::default()
        }),
    )
    .await
    .expect("page size u32::MAX is capped")
    .into_inner();
    assert_eq!(page.tasks.len(), 2, "{page:?}");
    invalid(
        "ListTasks state 99",
        within(
            "ListTasks",
            tasks.list_tasks(ListTasksRequest {
                state: 99,
                ..Default::default()
            }),
        )
        .await,
        "state",
    );
    invalid(
        "a garbage page token",
        within(
            "ListTasks",
            tasks.list_tasks(ListTasksRequest {
                page_token: "\u{1f4a3}not a token".into(),
                ..Default::default()
            }),
        )
        .await,
        "page_token",
    );

    assert_unharmed(&mut apply, "apply").await;
    assert_tasks_intact(&mut tasks, &witness).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_verify_options_do_not_pin_a_call() {
    let source = RedisServer::start(RedisVersion::V7_0).expect("source redis");
    let destination = RedisServer::start(RedisVersion::V7_0).expect("destination redis");
    // A difference that never converges: verification re-checks it every round.
    source.cmd_ok(&["SET", "only-on-source", "v"]).expect("SET");
    let mut apply = start_apply().await;
    let mut tasks = TaskServiceClient::new(channel(&apply).await);
    let mut s = spec(
        "verify",
        standalone(source.addr()),
        standalone(destination.addr()),
    );
    s.conflict_mode = ConflictMode::Overwrite as i32;
    let id = within(
        "CreateTask",
        tasks.create_task(CreateTaskRequest { spec: Some(s) }),
    )
    .await
    .expect("CreateTask")
    .into_inner()
    .task
    .expect("task")
    .id;

    // u32::MAX rounds a second apart would hold the call (and two Redis connections) for
    // 136 years.
    invalid(
        "VerifyTask rounds u32::MAX",
        within(
            "VerifyTask",
            tasks.verify_task(VerifyTaskRequest {
                id: id.clone(),
                rounds: u32::MAX,
                ..Default::default()
            }),
        )
        .await,
        "rounds",
    );
    // The other limits are harmless at their extremes: the list of differences is capped,
    // u32::MAX keys per second is no throttle, a huge TTL tolerance only hides TTL drift.
    let report = within(
        "VerifyTask",
        tasks.verify_task(VerifyTaskRequest {
            id: id.clone(),
            rounds: 1,
            max_differences: u32::MAX,
            max_keys_per_second: u32::MAX,
            ttl_tolerance_ms: u32::MAX,
        }),
    )
    .await
    .expect("VerifyTask with extreme limits")
    .into_inner();
    assert_eq!(report.differences, 1, "{report:?}");

    assert_unharmed(&mut apply, "apply").await;
}

// ---------------------------------------------------------------------------------------
// Ingest: subscriptions, acknowledgements and probes with absurd contents.

fn subscribe_request(subscriber: &str, address: String) -> SubscribeRequest {
    SubscribeRequest {
        subscriber_id: subscriber.to_owned(),
        source: Some(standalone(address)),
        heartbeat: Some(HeartbeatOptions {
            disabled: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn at(shard: &str, replid: &str, offset: u64) -> ShardPosition {
    ShardPosition {
        shard_id: shard.to_owned(),
        position: Some(Position {
            replid: replid.to_owned(),
            offset,
            ..Default::default()
        }),
    }
}

/// Reads the stream until a batch ends after the snapshot, returning that position.
async fn past_snapshot(stream: &mut Streaming<SubscribeResponse>) -> ShardPosition {
    loop {
        let batch = within("the snapshot", stream.message())
            .await
            .expect("stream")
            .expect("the stream ended");
        if let Some(p) = batch.end_position.filter(|p| !p.in_snapshot) {
            return ShardPosition {
                shard_id: batch.shard_id,
                position: Some(p),
            };
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_subscriptions_and_acknowledgements_are_refused_and_spools_kept() {
    let source = RedisServer::start(RedisVersion::V7_0).expect("source redis");
    source.cmd_ok(&["SET", "k", "v"]).expect("SET");
    let mut ingest = start_ingest().await;
    let mut client = IngestServiceClient::new(channel(&ingest).await);
    let replid = "8f0b7c5d0d1c6f3a1e2b4c5d6e7f8091a2b3c4d5";
    let mib = "s".repeat(1 << 20);

    let mut cases: Vec<(&str, SubscribeRequest, &str)> = Vec::new();
    cases.push((
        "a 1 MiB subscriber id",
        subscribe_request(&mib, source.addr()),
        "subscriber_id",
    ));
    let mut r = subscribe_request("t", source.addr());
    r.source.as_mut().expect("source").mode = 42;
    cases.push(("source mode 42", r, "source.mode"));
    cases.push((
        "an address that is not host:port",
        subscribe_request("t", "\u{1f4a3} garbage".into()),
        "source.address",
    ));
    cases.push((
        "a 100 KiB address",
        subscribe_request("t", format!("{}:6379", "a".repeat(100 << 10))),
        "source.address",
    ));
    for (what, offset) in [("offset u64::MAX", u64::MAX), ("offset 2^63", 1 << 63)] {
        let mut r = subscribe_request("t", source.addr());
        r.start = vec![at("standalone", replid, offset)];
        cases.push((what, r, "offset"));
    }
    let mut r = subscribe_request("t", source.addr());
    r.start = vec![at("standalone", &"z".repeat(1 << 10), 100)];
    cases.push(("a 1 KiB replid", r, "replid"));
    let mut r = subscribe_request("t", source.addr());
    r.start = vec![at("standalone", "a replid\r\nFLUSHALL", 100)];
    cases.push(("a replid with CRLF", r, "replid"));
    let mut r = subscribe_request("t", source.addr());
    r.start = vec![at(&mib, replid, 100)];
    cases.push(("a 1 MiB shard id", r, "shard_id"));
    let mut r = subscribe_request("t", source.addr());
    r.start = vec![at("../../escape", replid, 100)];
    cases.push(("a shard id that climbs directories", r, "shard_id"));
    for (what, interval_ms) in [("heartbeat every 1 ms", 1), ("every u32::MAX ms", u32::MAX)] {
        let mut r = subscribe_request("t", source.addr());
        r.heartbeat = Some(HeartbeatOptions {
            interval_ms,
            ..Default::default()
        });
        cases.push((what, r, "heartbeat.interval_ms"));
    }
    let mut r = subscribe_request("t", source.addr());
    r.heartbeat = Some(HeartbeatOptions {
        key_prefix: "p".repeat(100 << 10),
        ..Default::default()
    });
    cases.push(("a 100 KiB heartbeat prefix", r, "heartbeat.key_prefix"));
    for (what, request, field) in cases {
        invalid(what, within(what, client.subscribe(request)).await, field);
    }
    invalid(
        "Acknowledge with a 1 MiB subscriber id",
        within(
            "Acknowledge",
            client.acknowledge(AcknowledgeRequest {
                subscriber_id: mib.clone(),
                positions: vec![],
            }),
        )
        .await,
        "subscriber_id",
    );
    let s = refused(
        "Acknowledge of an unknown subscriber",
        within(
            "Acknowledge",
            client.acknowledge(AcknowledgeRequest {
                subscriber_id: "nobody".into(),
                positions: vec![at("standalone", replid, 5)],
            }),
        )
        .await,
        &[Code::NotFound],
    );
    assert!(s.message().contains("nobody"), "{}", s.message());

    // A real subscription, to see that hostile acknowledgements cannot trim its spool.
    let mut stream = within(
        "Subscribe",
        client.subscribe(subscribe_request("real", source.addr())),
    )
    .await
    .expect("Subscribe")
    .into_inner();
    let applied = past_snapshot(&mut stream).await;
    let p = applied.position.clone().expect("position");
    // Accepted, and trimming nothing: a position the spool does not hold trims nothing
    // (spool.rs `trim`), so a subscriber that claims more than it got loses nothing it
    // has not applied, and one that names other shards or histories touches nothing.
    for (what, position) in [
        (
            "beyond what was sent",
            at("standalone", &p.replid, u64::MAX),
        ),
        ("of another history", at("standalone", replid, p.offset)),
        (
            "of an unknown shard",
            at("no-such-shard", &p.replid, p.offset),
        ),
        (
            "of a shard outside the spool",
            at("../..", &p.replid, p.offset),
        ),
        ("of a 1 MiB shard id", at(&mib, &p.replid, p.offset)),
    ] {
        within(
            what,
            client.acknowledge(AcknowledgeRequest {
                subscriber_id: "real".into(),
                positions: vec![position],
            }),
        )
        .await
        .unwrap_or_else(|s| panic!("Acknowledge {what}: {s:?}"));
    }
    drop(stream);
    // The subscription resumes from its position, from the spool: no second full copy.
    let mut request = subscribe_request("real", source.addr());
    request.start = vec![applied];
    let mut stream = within("Subscribe", client.subscribe(request))
        .await
        .expect("resubscribe")
        .into_inner();
    source.cmd_ok(&["SET", "after", "v"]).expect("SET");
    loop {
        let batch = within("the resumed stream", stream.message())
            .await
            .expect("stream")
            .expect("the resumed stream ended");
        let end = batch.end_position.expect("end position");
        assert!(
            !end.in_snapshot && end.replid == p.replid && end.offset >= p.offset,
            "resumed at {end:?}, after {p:?}"
        );
        if end.offset > p.offset {
            break; // the write made after the bogus acknowledgements
        }
    }
    assert_eq!(source.info_stat("sync_full").expect("INFO"), 1);

    // A position for a shard the source does not have is ignored: standalone has one.
    let mut request = subscribe_request("other", source.addr());
    request.start = vec![at("no-such-shard", replid, 100)];
    within("Subscribe", client.subscribe(request))
        .await
        .expect("a position of an unknown shard is ignored");

    assert_unharmed(&mut ingest, "ingest").await;
}

/// TLS file paths name files on the service's own host. Reading a FIFO blocks a runtime
/// thread until a writer comes (two such calls froze ingest, health checks included), a
/// device like `/dev/zero` never ends, and a huge file is read whole: each must be refused
/// before it is opened. (`/dev/zero` itself is left to the unit test of
/// `check_pem_file`: were the check lost, this suite would eat the machine's memory.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_that_cannot_be_read_safely_are_refused() {
    let mut ingest = start_ingest().await;
    let mut apply = start_apply().await;
    let mut probe = IngestServiceClient::new(channel(&ingest).await);
    let mut tasks = TaskServiceClient::new(channel(&apply).await);
    let witness = create_witness(&mut tasks).await;

    let fifo = ingest.dir.join("fifo.pem");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    let huge = ingest.dir.join("huge.pem");
    std::fs::File::create(&huge)
        .and_then(|f| f.set_len(64 << 20)) // sparse: no disk used
        .expect("huge file");
    let files = [
        ("a FIFO", fifo.display().to_string()),
        ("a directory", ingest.dir.display().to_string()),
        ("a 64 MiB file", huge.display().to_string()),
    ];
    for (what, path) in files {
        for field in ["ca_file", "cert_file", "key_file"] {
            let mut tls = RedisTls {
                enabled: true,
                ..Default::default()
            };
            match field {
                "ca_file" => tls.ca_file.clone_from(&path),
                "cert_file" => tls.cert_file.clone_from(&path),
                _ => tls.key_file.clone_from(&path),
            }
            let mut source = standalone("127.0.0.1:6379".into());
            source.tls = Some(tls.clone());
            let what = format!("{what} as {field}");
            invalid(
                &format!("ProbeSource with {what}"),
                within(
                    &what,
                    probe.probe_source(ProbeSourceRequest {
                        source: Some(source.clone()),
                    }),
                )
                .await,
                field,
            );
            let mut request = subscribe_request("tls", String::new());
            request.source = Some(source.clone());
            invalid(
                &format!("Subscribe with {what}"),
                within(&what, probe.subscribe(request)).await,
                field,
            );
            let mut s = good_spec("tls");
            s.destination.as_mut().expect("destination").tls = Some(tls);
            invalid(
                &format!("CreateTask with {what}"),
                within(
                    &what,
                    tasks.create_task(CreateTaskRequest { spec: Some(s) }),
                )
                .await,
                &format!("spec.destination.tls.{field}"),
            );
        }
    }

    assert_unharmed(&mut ingest, "ingest").await;
    assert_unharmed(&mut apply, "apply").await;
    assert_tasks_intact(&mut tasks, &witness).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_of_garbage_or_unreachable_sources_answer_in_bounded_time() {
    let mut ingest = start_ingest().await;
    let mut client = IngestServiceClient::new(channel(&ingest).await);

    invalid(
        "ProbeSource without a source",
        within(
            "ProbeSource",
            client.probe_source(ProbeSourceRequest { source: None }),
        )
        .await,
        "source",
    );
    invalid(
        "ProbeSource without an address",
        within(
            "ProbeSource",
            client.probe_source(ProbeSourceRequest {
                source: Some(standalone(String::new())),
            }),
        )
        .await,
        "source.address",
    );

    let closed: SocketAddr = free_addr();
    let addresses = [
        ("a closed port", closed.to_string()),
        ("garbage", "\u{1f4a3} not an address".to_owned()),
        ("a port out of range", "127.0.0.1:99999".to_owned()),
        (
            "a 100 KiB host name",
            format!("{}:6379", "a".repeat(100 << 10)),
        ),
        // TEST-NET-1 (RFC 5737): never routed, so packets are dropped or refused.
        ("an address nobody answers", "192.0.2.1:6379".to_owned()),
    ];
    for (what, address) in addresses {
        let mut source = standalone(address);
        source.mode = InstanceMode::Unspecified as i32;
        let answer = within(
            what,
            client.probe_source(ProbeSourceRequest {
                source: Some(source),
            }),
        )
        .await;
        match answer {
            // The probe reports the failure in its answer; the precheck shows it.
            Ok(r) => {
                let error = r
                    .into_inner()
                    .error
                    .unwrap_or_else(|| panic!("{what}: no error"));
                assert_ne!(
                    error.kind,
                    ProbeErrorKind::Unspecified as i32,
                    "{what}: {error:?}"
                );
                assert!(error.message.len() < 4096, "{what}: {error:?}");
            }
            Err(s) => {
                refused(
                    what,
                    Err::<tonic::Response<()>, _>(s),
                    &[Code::InvalidArgument],
                );
            }
        }
    }

    assert_unharmed(&mut ingest, "ingest").await;
}
