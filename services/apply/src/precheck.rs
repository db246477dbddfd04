//! The precheck: every item of DESIGN.md "Tasks", each PASSED, WARNING or FAILED with
//! what was found and how to fix it. Nothing is written to either end.
//!
//! The source is inspected through ingest's `ProbeSource` (apply may not reach the
//! source at all across the WAN); the destination directly. Both sides are gathered
//! first, concurrently and under timeouts, then each item is judged on its own from
//! that picture, so one broken side never hides what is known about the other. An item
//! that cannot be judged because its side could not be inspected is reported as
//! UNSPECIFIED ("not run") with the reason; the side's reachability item carries the
//! FAILED status.

use std::{collections::BTreeMap, time::Duration};

use redis_sync_command::cluster::{ClusterNode, SLOTS};
use redis_sync_proto::v1::{
    CheckStatus, ConflictMode, InstanceMode, PrecheckItem, PrecheckResult, ProbeErrorKind,
    ProbeSourceRequest, ProbeSourceResponse, RedisEndpoint, TaskSpec,
};

use crate::{config::ApplyConfig, endpoint, ingest_client, task};

/// Longest wait for ingest's ProbeSource (it runs a replica handshake on every master).
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for a TCP connection plus AUTH to a destination node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// Longest wait for one destination command.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Smallest source `repl-backlog-size` that rides out a short WAN outage without a full resync.
const MIN_BACKLOG: u64 = 64 * 1024 * 1024;
/// Smallest source `repl-timeout` (seconds) that does not drop a replica on a slow link.
const MIN_REPL_TIMEOUT: u64 = 60;
/// Slots of a Redis Cluster.
const CLUSTER_SLOTS: u64 = SLOTS as u64;

/// Stable item names, in the order they are reported.
pub mod items {
    /// ingest answered ProbeSource.
    pub const INGEST_REACHABLE: &str = "ingest_reachable";
    /// Source reachable and authenticated.
    pub const SOURCE_REACHABLE: &str = "source_reachable";
    /// Source mode is what the task says; a cluster covers every slot.
    pub const SOURCE_MODE: &str = "source_mode";
    /// Source version supported.
    pub const SOURCE_VERSION: &str = "source_version";
    /// Every source master accepts a replica with the task's credentials.
    pub const SOURCE_PSYNC: &str = "source_psync_allowed";
    /// Source repl-backlog-size and repl-timeout.
    pub const SOURCE_REPLICATION_SETTINGS: &str = "source_replication_settings";
    /// Heartbeat key writable.
    pub const HEARTBEAT_KEY: &str = "heartbeat_key";
    /// Destination reachable and authenticated.
    pub const DESTINATION_REACHABLE: &str = "destination_reachable";
    /// Destination mode is what the task says; a cluster covers every slot.
    pub const DESTINATION_MODE: &str = "destination_mode";
    /// Destination is a master.
    pub const DESTINATION_ROLE: &str = "destination_role";
    /// Destination version ≥ source version.
    pub const DESTINATION_VERSION: &str = "destination_version";
    /// Selected destination databases empty.
    pub const DESTINATION_EMPTY: &str = "destination_empty";
    /// Destination maxmemory-policy is noeviction.
    pub const DESTINATION_EVICTION: &str = "destination_eviction_policy";
    /// Destination memory headroom ≥ source data size.
    pub const DESTINATION_MEMORY: &str = "destination_memory";
    /// Source modules loaded on the destination.
    pub const DESTINATION_MODULES: &str = "destination_modules";
}

/// Runs every item for `spec` (passwords included) and returns the result.
pub async fn run(spec: &TaskSpec, config: &ApplyConfig) -> PrecheckResult {
    let (source, destination) = tokio::join!(probe_source(spec, config), inspect_destination(spec));
    let items = judge(spec, &source, &destination);
    let passed = !items.iter().any(|i| i.status == CheckStatus::Failed as i32);
    PrecheckResult {
        items,
        passed,
        time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
    }
}

/// Judges every item from what was gathered; pure, so each rule is testable alone.
fn judge(spec: &TaskSpec, source: &SourceView, destination: &DestView) -> Vec<PrecheckItem> {
    vec![
        ingest_reachable(source),
        source_reachable(source),
        source_mode(spec, source),
        source_version(source),
        source_psync(source),
        source_replication_settings(source),
        heartbeat_key(spec),
        destination_reachable(destination),
        destination_mode(destination),
        destination_role(destination),
        destination_version(source, destination),
        destination_empty(spec, destination),
        destination_eviction(destination),
        destination_memory(source, destination),
        destination_modules(source, destination),
    ]
}

fn item(
    name: &str,
    status: CheckStatus,
    reason: impl Into<String>,
    fix: impl Into<String>,
) -> PrecheckItem {
    PrecheckItem {
        name: name.to_owned(),
        status: status as i32,
        reason: reason.into(),
        fix: fix.into(),
    }
}

fn passed(name: &str, reason: impl Into<String>) -> PrecheckItem {
    item(name, CheckStatus::Passed, reason, "")
}

fn not_run(name: &str, reason: impl Into<String>) -> PrecheckItem {
    item(
        name,
        CheckStatus::Unspecified,
        format!("not checked: {}", reason.into()),
        "",
    )
}

// ---------------------------------------------------------------------------------------
// The source, through ingest.

/// What ingest said about the source, or why it could not say anything.
enum SourceView {
    /// ingest could not be asked (unreachable, refused, no ProbeSource).
    NoIngest { reason: String, fix: String },
    /// ingest answered.
    Probed {
        endpoint: String,
        probe: ProbeSourceResponse,
    },
}

impl SourceView {
    /// The probe, when the source itself could be inspected.
    fn usable(&self) -> Result<&ProbeSourceResponse, String> {
        match self {
            SourceView::NoIngest { .. } => Err(format!(
                "ingest could not probe the source (see {})",
                items::INGEST_REACHABLE
            )),
            SourceView::Probed { probe, .. } if probe.error.is_some() => Err(format!(
                "the source could not be inspected (see {})",
                items::SOURCE_REACHABLE
            )),
            SourceView::Probed { probe, .. } => Ok(probe),
        }
    }
}

async fn probe_source(spec: &TaskSpec, config: &ApplyConfig) -> SourceView {
    let endpoint = if spec.ingest_endpoint.is_empty() {
        config.ingest_endpoint.clone()
    } else {
        spec.ingest_endpoint.clone()
    };
    let no_ingest = |reason: String, fix: &str| SourceView::NoIngest {
        reason,
        fix: fix.to_owned(),
    };
    let mut client = match ingest_client::ingest_client(&endpoint, config) {
        Ok(c) => c,
        Err(e) => {
            return no_ingest(
                e.to_string(),
                "set spec.ingest_endpoint (or apply's --ingest-endpoint) to ingest's gRPC address",
            );
        }
    };
    let mut request = tonic::Request::new(ProbeSourceRequest {
        source: spec.source.clone(),
    });
    request.set_timeout(PROBE_TIMEOUT);
    // The grpc-timeout header bounds ingest's work; this bounds ours if the network hangs.
    let answer = tokio::time::timeout(
        PROBE_TIMEOUT + Duration::from_secs(2),
        client.probe_source(request),
    )
    .await;
    match answer {
        Err(_) => no_ingest(
            format!(
                "ingest at {endpoint} did not answer ProbeSource within {}s",
                PROBE_TIMEOUT.as_secs()
            ),
            "check that ingest runs and can reach the source",
        ),
        Ok(Ok(response)) => SourceView::Probed {
            endpoint,
            probe: response.into_inner(),
        },
        Ok(Err(status)) => {
            // A failed TLS handshake surfaces as "transport error"; its cause (e.g.
            // "received fatal alert: CertificateRequired") is in the error's sources.
            let detail = error_chain(&status);
            let (what, fix) = match status.code() {
                _ if is_tls_failure(&detail) => (
                    "refused the TLS handshake",
                    "check apply's --ingest-ca (the CA of ingest's --tls-cert) and, when ingest sets --tls-client-ca, --ingest-client-cert/--ingest-client-key signed by that CA",
                ),
                tonic::Code::Unavailable => (
                    "is not reachable",
                    "start ingest or fix spec.ingest_endpoint; check the network path from apply to ingest",
                ),
                tonic::Code::Unimplemented => (
                    "does not implement ProbeSource",
                    "run an ingest build that implements ProbeSource",
                ),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => (
                    "refused apply's token",
                    "set apply's --ingest-token to the token ingest expects",
                ),
                tonic::Code::DeadlineExceeded => (
                    "did not answer in time",
                    "check that ingest can reach the source",
                ),
                // Over https a refused client certificate often shows only as a
                // closed connection: the server's alert races with the request.
                tonic::Code::Unknown | tonic::Code::Cancelled
                    if endpoint.starts_with("https://") =>
                {
                    (
                        "closed the connection",
                        "check apply's --ingest-ca (the CA of ingest's --tls-cert) and, when ingest sets --tls-client-ca, --ingest-client-cert/--ingest-client-key signed by that CA; else see ingest's log",
                    )
                }
                _ => ("failed the probe", "see ingest's log"),
            };
            no_ingest(
                format!(
                    "ingest at {endpoint} {what} ({:?}: {detail})",
                    status.code()
                ),
                fix,
            )
        }
    }
}

/// The status message followed by its sources, each once.
fn error_chain(status: &tonic::Status) -> String {
    let mut out = status.message().to_owned();
    let mut cur = std::error::Error::source(status);
    while let Some(e) = cur {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = e.source();
    }
    out
}

/// True when an error text is a TLS handshake or certificate failure.
fn is_tls_failure(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    ["certificate", "fatal alert", "unknownissuer", "handshake"]
        .iter()
        .any(|needle| text.contains(needle))
}

fn ingest_reachable(source: &SourceView) -> PrecheckItem {
    match source {
        SourceView::NoIngest { reason, fix, .. } => item(
            items::INGEST_REACHABLE,
            CheckStatus::Failed,
            reason.clone(),
            fix.clone(),
        ),
        SourceView::Probed { endpoint, .. } => passed(
            items::INGEST_REACHABLE,
            format!("ingest at {endpoint} answered ProbeSource"),
        ),
    }
}

fn source_reachable(source: &SourceView) -> PrecheckItem {
    let probe = match source {
        SourceView::NoIngest { .. } => {
            return not_run(
                items::SOURCE_REACHABLE,
                format!(
                    "ingest could not probe the source (see {})",
                    items::INGEST_REACHABLE
                ),
            );
        }
        SourceView::Probed { probe, .. } => probe,
    };
    if let Some(err) = &probe.error {
        let (what, fix) = match ProbeErrorKind::try_from(err.kind) {
            Ok(ProbeErrorKind::Authentication) => (
                "refused the credentials (wrong user or password)",
                "set spec.source.username/password to credentials the source accepts",
            ),
            Ok(ProbeErrorKind::Unreachable) => (
                "is not reachable from ingest",
                "check spec.source.address and the network path from ingest to the source",
            ),
            _ => (
                "answered unexpectedly",
                "check that spec.source.address is a Redis server",
            ),
        };
        return item(
            items::SOURCE_REACHABLE,
            CheckStatus::Failed,
            format!("the source {what}: {}", err.message),
            fix,
        );
    }
    let broken: Vec<String> = probe
        .masters
        .iter()
        .filter_map(|m| {
            m.error
                .as_ref()
                .map(|e| format!("{} ({}): {}", m.address, m.shard_id, e.message))
        })
        .collect();
    if !broken.is_empty() {
        return item(
            items::SOURCE_REACHABLE,
            CheckStatus::Failed,
            format!(
                "source masters that could not be inspected: {}",
                broken.join("; ")
            ),
            "make every source master reachable from ingest with the task's credentials",
        );
    }
    if probe.masters.is_empty() {
        return item(
            items::SOURCE_REACHABLE,
            CheckStatus::Failed,
            "the probe found no source master",
            "check spec.source.address",
        );
    }
    passed(
        items::SOURCE_REACHABLE,
        format!(
            "{} master(s) reachable and authenticated",
            probe.masters.len()
        ),
    )
}

fn mode_name(mode: i32) -> &'static str {
    match InstanceMode::try_from(mode) {
        Ok(InstanceMode::Standalone) => "STANDALONE",
        Ok(InstanceMode::Cluster) => "CLUSTER",
        _ => "UNSPECIFIED",
    }
}

fn source_mode(spec: &TaskSpec, source: &SourceView) -> PrecheckItem {
    let probe = match source.usable() {
        Ok(p) => p,
        Err(why) => return not_run(items::SOURCE_MODE, why),
    };
    let wanted = spec.source.as_ref().map_or(0, |s| s.mode);
    if probe.mode != wanted {
        return item(
            items::SOURCE_MODE,
            CheckStatus::Failed,
            format!(
                "the task says {} but the source is {}",
                mode_name(wanted),
                mode_name(probe.mode)
            ),
            "set spec.source.mode to the source's mode (create a new task)",
        );
    }
    if wanted == InstanceMode::Cluster as i32 && !probe.all_slots_covered {
        return item(
            items::SOURCE_MODE,
            CheckStatus::Failed,
            "the source cluster's masters do not cover all 16384 slots",
            "assign every slot on the source cluster (CLUSTER ADDSLOTS or redis-cli --cluster fix)",
        );
    }
    passed(
        items::SOURCE_MODE,
        format!("the source is {}", mode_name(probe.mode)),
    )
}

/// "7.0.15" → (7, 0, 15); missing parts are 0. `None` when the major is not a number.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.trim().split('.').map(|p| p.parse::<u32>());
    let major = parts.next()?.ok()?;
    let minor = parts.next().and_then(Result::ok).unwrap_or(0);
    let patch = parts.next().and_then(Result::ok).unwrap_or(0);
    Some((major, minor, patch))
}

fn source_version(source: &SourceView) -> PrecheckItem {
    let probe = match source.usable() {
        Ok(p) => p,
        Err(why) => return not_run(items::SOURCE_VERSION, why),
    };
    match parse_version(&probe.version) {
        Some(v) if v >= (2, 8, 0) => passed(
            items::SOURCE_VERSION,
            format!("source version {} is supported (2.8+)", probe.version),
        ),
        Some(_) => item(
            items::SOURCE_VERSION,
            CheckStatus::Failed,
            format!(
                "source version {} is older than 2.8, which has no PSYNC",
                probe.version
            ),
            "upgrade the source to Redis 2.8 or later",
        ),
        None => item(
            items::SOURCE_VERSION,
            CheckStatus::Failed,
            format!("source version {:?} is not a Redis version", probe.version),
            "check that the source is Redis 2.8 or later",
        ),
    }
}

fn source_psync(source: &SourceView) -> PrecheckItem {
    let probe = match source.usable() {
        Ok(p) => p,
        Err(why) => return not_run(items::SOURCE_PSYNC, why),
    };
    let refused: Vec<String> = probe
        .masters
        .iter()
        .filter(|m| m.error.is_none() && !m.psync_allowed)
        .map(|m| {
            format!(
                "{}: {}",
                m.address,
                if m.psync_error.is_empty() {
                    "refused"
                } else {
                    &m.psync_error
                }
            )
        })
        .collect();
    if refused.is_empty() {
        passed(
            items::SOURCE_PSYNC,
            format!(
                "all {} master(s) accept a replica with the task's credentials",
                probe.masters.len()
            ),
        )
    } else {
        item(
            items::SOURCE_PSYNC,
            CheckStatus::Failed,
            format!("masters that refuse a replica: {}", refused.join("; ")),
            "allow replication for the task's user (ACL: +psync +replconf +ping) and make sure SYNC/PSYNC are not renamed",
        )
    }
}

fn source_replication_settings(source: &SourceView) -> PrecheckItem {
    let probe = match source.usable() {
        Ok(p) => p,
        Err(why) => return not_run(items::SOURCE_REPLICATION_SETTINGS, why),
    };
    let mut findings = Vec::new();
    for m in probe.masters.iter().filter(|m| m.error.is_none()) {
        if m.repl_backlog_size == 0 {
            findings.push(format!(
                "{}: repl-backlog-size could not be read (CONFIG GET refused)",
                m.address
            ));
        } else if m.repl_backlog_size < MIN_BACKLOG {
            findings.push(format!(
                "{}: repl-backlog-size is {} bytes, below 64 MiB",
                m.address, m.repl_backlog_size
            ));
        }
        if m.repl_timeout_seconds == 0 {
            findings.push(format!(
                "{}: repl-timeout could not be read (CONFIG GET refused)",
                m.address
            ));
        } else if m.repl_timeout_seconds < MIN_REPL_TIMEOUT {
            findings.push(format!(
                "{}: repl-timeout is {}s, below {MIN_REPL_TIMEOUT}s",
                m.address, m.repl_timeout_seconds
            ));
        }
    }
    if findings.is_empty() {
        passed(
            items::SOURCE_REPLICATION_SETTINGS,
            "repl-backlog-size ≥ 64 MiB and repl-timeout ≥ 60s on every master",
        )
    } else {
        item(
            items::SOURCE_REPLICATION_SETTINGS,
            CheckStatus::Warning,
            format!(
                "a WAN hiccup may force a full resync or drop the link: {}",
                findings.join("; ")
            ),
            "on every source master: CONFIG SET repl-backlog-size 64mb (or more) and CONFIG SET repl-timeout 60 (and persist them in redis.conf)",
        )
    }
}

fn heartbeat_key(spec: &TaskSpec) -> PrecheckItem {
    let hb = spec.heartbeat.clone().unwrap_or_default();
    if hb.disabled {
        return item(
            items::HEARTBEAT_KEY,
            CheckStatus::Warning,
            "the heartbeat is disabled: the sync delay cannot be measured",
            "enable spec.heartbeat to see the delay",
        );
    }
    let prefix = if hb.key_prefix.is_empty() {
        task::DEFAULT_HEARTBEAT_PREFIX
    } else {
        &hb.key_prefix
    };
    passed(
        items::HEARTBEAT_KEY,
        format!("written by ingest on every source master under {prefix}:<task id>"),
    )
}

// ---------------------------------------------------------------------------------------
// The destination, directly.

/// One destination master as found.
#[derive(Debug, Default, Clone)]
struct DestNode {
    address: String,
    version: String,
    role: String,
    master_of: Option<String>,
    cluster_enabled: bool,
    used_memory: u64,
    /// None when neither INFO nor CONFIG GET told it.
    maxmemory: Option<u64>,
    policy: Option<String>,
    keys_per_db: BTreeMap<u32, u64>,
    modules: Vec<String>,
    /// Slots this master owns (cluster only).
    slots: u64,
}

/// What was found on the destination.
enum DestView {
    /// The destination (or one of its masters) could not be inspected.
    Unreachable { reason: String, fix: String },
    /// The entry node and, for a cluster, every master.
    Found(DestInfo),
}

struct DestInfo {
    /// The node named by spec.destination.address.
    entry: DestNode,
    /// The nodes that take writes: the entry node for a standalone destination, every
    /// slot-owning master for a cluster.
    masters: Vec<DestNode>,
    /// CLUSTER INFO of the entry node, when it is a cluster node.
    cluster_state: Option<String>,
    slots_assigned: Option<u64>,
    /// The task's destination mode.
    wanted_mode: i32,
}

/// A Redis error turned into a reason and a fix, with authentication told apart.
fn describe_redis_error(address: &str, err: &redis::RedisError) -> (String, String) {
    let text = err.to_string();
    let auth = err.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
        || text.contains("invalid password")
        || text.contains("invalid username-password");
    if is_tls_failure(&text) {
        (
            format!("TLS with {address} failed: {text}"),
            "check spec.destination.tls: ca_file must hold the CA that signed the destination's certificate, and cert_file/key_file a client certificate when the destination sets tls-auth-clients".to_owned(),
        )
    } else if auth {
        (
            format!("{address} refused the credentials: authentication failed (wrong password or user, or the server needs none): {text}"),
            "set spec.destination.username/password to credentials the destination accepts (create a new task)".to_owned(),
        )
    } else if err.is_io_error() || err.is_connection_refusal() || err.is_timeout() {
        (
            format!("{address} is not reachable: {text}"),
            "check spec.destination.address and that apply can reach it".to_owned(),
        )
    } else {
        (
            format!("{address}: {text}"),
            "check that the destination is a Redis server".to_owned(),
        )
    }
}

async fn call<T: redis::FromRedisValue>(
    con: &mut redis::aio::MultiplexedConnection,
    address: &str,
    cmd: &redis::Cmd,
) -> Result<T, (String, String)> {
    match tokio::time::timeout(CALL_TIMEOUT, cmd.query_async::<T>(con)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(describe_redis_error(address, &e)),
        Err(_) => Err((
            format!(
                "{address} did not answer within {}s",
                CALL_TIMEOUT.as_secs()
            ),
            "check the destination's load and the network".to_owned(),
        )),
    }
}

async fn connect(
    ep: &RedisEndpoint,
    address: &str,
) -> Result<redis::aio::MultiplexedConnection, (String, String)> {
    let fix_addr = "check spec.destination.address and that apply can reach it".to_owned();
    match tokio::time::timeout(CONNECT_TIMEOUT, endpoint::connect_node(ep, address)).await {
        Err(_) => Err((
            format!(
                "{address} did not accept a connection within {}s",
                CONNECT_TIMEOUT.as_secs()
            ),
            fix_addr,
        )),
        Ok(Err(endpoint::EndpointError::Redis { source, .. })) => {
            Err(describe_redis_error(address, &source))
        }
        Ok(Err(e @ endpoint::EndpointError::TlsFile { .. })) => Err((
            e.to_string(),
            "fix spec.destination.tls: the file must exist, be readable by apply and hold PEM (create a new task)".to_owned(),
        )),
        Ok(Err(e)) => Err((e.to_string(), fix_addr)),
        Ok(Ok(con)) => Ok(con),
    }
}

/// `INFO` text → field map.
fn parse_info(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim_end_matches('\r').split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `db3:keys=12,expires=0,avg_ttl=0` fields of INFO → db → keys.
fn keyspace(info: &BTreeMap<String, String>) -> BTreeMap<u32, u64> {
    info.iter()
        .filter_map(|(k, v)| {
            let db = k.strip_prefix("db")?.parse::<u32>().ok()?;
            let keys = v
                .split(',')
                .find_map(|kv| kv.strip_prefix("keys="))?
                .parse::<u64>()
                .ok()?;
            Some((db, keys))
        })
        .collect()
}

async fn config_get(
    con: &mut redis::aio::MultiplexedConnection,
    address: &str,
    name: &str,
) -> Option<String> {
    let reply: Vec<String> = call(con, address, redis::cmd("CONFIG").arg("GET").arg(name))
        .await
        .ok()?;
    reply.get(1).cloned()
}

/// MODULE LIST names; empty on servers without modules (before 4.0 the command is unknown).
async fn module_names(con: &mut redis::aio::MultiplexedConnection, address: &str) -> Vec<String> {
    let Ok(reply) = call::<redis::Value>(con, address, redis::cmd("MODULE").arg("LIST")).await
    else {
        return Vec::new();
    };
    let redis::Value::Array(modules) = reply else {
        return Vec::new();
    };
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    modules
        .iter()
        .filter_map(|m| match m {
            redis::Value::Array(fields) => fields
                .chunks(2)
                .find(|kv| kv.first().and_then(text).as_deref() == Some("name"))
                .and_then(|kv| kv.get(1).and_then(text)),
            redis::Value::Map(fields) => fields
                .iter()
                .find(|(k, _)| text(k).as_deref() == Some("name"))
                .and_then(|(_, v)| text(v)),
            _ => None,
        })
        .collect()
}

/// Connects to one node and reads what the items need.
async fn inspect_node(ep: &RedisEndpoint, address: &str) -> Result<DestNode, (String, String)> {
    let mut con = connect(ep, address).await?;
    // PING first: a server that wants a password only says so (NOAUTH) on the first command.
    call::<String>(&mut con, address, &redis::cmd("PING")).await?;
    let text: String = call(&mut con, address, &redis::cmd("INFO")).await?;
    let info = parse_info(&text);
    let num = |k: &str| info.get(k).and_then(|v| v.parse::<u64>().ok());
    let mut node = DestNode {
        address: address.to_owned(),
        version: info.get("redis_version").cloned().unwrap_or_default(),
        role: info.get("role").cloned().unwrap_or_default(),
        master_of: info.get("master_host").map(|h| {
            format!(
                "{h}:{}",
                info.get("master_port").map_or("?", String::as_str)
            )
        }),
        cluster_enabled: info.get("cluster_enabled").is_some_and(|v| v == "1"),
        used_memory: num("used_memory").unwrap_or(0),
        maxmemory: num("maxmemory"),
        policy: info.get("maxmemory_policy").cloned(),
        keys_per_db: keyspace(&info),
        modules: Vec::new(),
        slots: 0,
    };
    // Before 3.2 INFO has neither maxmemory nor the policy.
    if node.maxmemory.is_none() {
        node.maxmemory = config_get(&mut con, address, "maxmemory")
            .await
            .and_then(|v| v.parse().ok());
    }
    if node.policy.is_none() {
        node.policy = config_get(&mut con, address, "maxmemory-policy").await;
    }
    node.modules = module_names(&mut con, address).await;
    Ok(node)
}

/// Masters of a cluster from `CLUSTER NODES`: (address, slots owned). A line that does
/// not parse is passed over: the items judge what the rest of the reply shows. A master
/// the answering node suspects (`fail?`) is left out too: it may be on its way out.
fn cluster_masters(nodes: &str, entry_host: &str) -> Vec<(String, u64)> {
    nodes
        .lines()
        .filter_map(|line| ClusterNode::parse(line, entry_host).ok())
        .filter(|n| n.serves_slots() && !n.has_flag("fail?"))
        .map(|n| (n.addr.clone(), n.slot_count() as u64))
        .collect()
}

async fn inspect_destination(spec: &TaskSpec) -> DestView {
    let Some(ep) = spec.destination.as_ref() else {
        return DestView::Unreachable {
            reason: "the task has no destination".into(),
            fix: "create the task with spec.destination".into(),
        };
    };
    let entry = match inspect_node(ep, &ep.address).await {
        Ok(n) => n,
        Err((reason, fix)) => return DestView::Unreachable { reason, fix },
    };
    let mut info = DestInfo {
        masters: vec![entry.clone()],
        entry,
        cluster_state: None,
        slots_assigned: None,
        wanted_mode: ep.mode,
    };
    if !(endpoint::is_cluster(ep) && info.entry.cluster_enabled) {
        return DestView::Found(info);
    }
    // A cluster: read its state and inspect every slot-owning master.
    let gathered = async {
        let mut con = connect(ep, &ep.address).await?;
        let ci: String = call(&mut con, &ep.address, redis::cmd("CLUSTER").arg("INFO")).await?;
        let nodes: String = call(&mut con, &ep.address, redis::cmd("CLUSTER").arg("NODES")).await?;
        Ok::<_, (String, String)>((parse_info(&ci), nodes))
    }
    .await;
    let (ci, nodes) = match gathered {
        Ok(v) => v,
        Err((reason, fix)) => return DestView::Unreachable { reason, fix },
    };
    info.cluster_state = ci.get("cluster_state").cloned();
    info.slots_assigned = ci
        .get("cluster_slots_assigned")
        .and_then(|v| v.parse().ok());
    let entry_host = endpoint::host_port(&ep.address)
        .map(|(h, _)| h)
        .unwrap_or_default();
    let masters = cluster_masters(&nodes, &entry_host);
    let found =
        futures_util::future::join_all(masters.iter().map(|(addr, _)| inspect_node(ep, addr)))
            .await;
    let mut nodes = Vec::new();
    let mut broken = Vec::new();
    for ((_, slots), result) in masters.iter().zip(found) {
        match result {
            Ok(mut n) => {
                n.slots = *slots;
                nodes.push(n);
            }
            Err((reason, _)) => broken.push(reason),
        }
    }
    if !broken.is_empty() {
        return DestView::Unreachable {
            reason: format!(
                "destination cluster masters could not be inspected: {}",
                broken.join("; ")
            ),
            fix: "make every destination master reachable from apply with the task's credentials"
                .into(),
        };
    }
    info.masters = nodes;
    DestView::Found(info)
}

fn dest_usable(destination: &DestView) -> Result<&DestInfo, String> {
    match destination {
        DestView::Found(d) => Ok(d),
        DestView::Unreachable { .. } => Err(format!(
            "the destination could not be inspected (see {})",
            items::DESTINATION_REACHABLE
        )),
    }
}

fn destination_reachable(destination: &DestView) -> PrecheckItem {
    match destination {
        DestView::Unreachable { reason, fix } => item(
            items::DESTINATION_REACHABLE,
            CheckStatus::Failed,
            reason.clone(),
            fix.clone(),
        ),
        DestView::Found(d) => passed(
            items::DESTINATION_REACHABLE,
            format!(
                "{} (Redis {}) reachable and authenticated",
                d.entry.address, d.entry.version
            ),
        ),
    }
}

fn destination_mode(destination: &DestView) -> PrecheckItem {
    let d = match dest_usable(destination) {
        Ok(d) => d,
        Err(why) => return not_run(items::DESTINATION_MODE, why),
    };
    let wanted_cluster = d.wanted_mode == InstanceMode::Cluster as i32;
    match (wanted_cluster, d.entry.cluster_enabled) {
        (false, false) => passed(items::DESTINATION_MODE, "the destination is STANDALONE"),
        (false, true) => item(
            items::DESTINATION_MODE,
            CheckStatus::Failed,
            format!(
                "the task says STANDALONE but {} is a cluster node",
                d.entry.address
            ),
            "create the task with spec.destination.mode CLUSTER",
        ),
        (true, false) => item(
            items::DESTINATION_MODE,
            CheckStatus::Failed,
            format!(
                "the task says CLUSTER but {} has cluster mode disabled",
                d.entry.address
            ),
            "create the task with spec.destination.mode STANDALONE",
        ),
        (true, true) => {
            let assigned = d.slots_assigned.unwrap_or(0);
            let state = d.cluster_state.as_deref().unwrap_or("unknown");
            if assigned == CLUSTER_SLOTS && state == "ok" {
                passed(
                    items::DESTINATION_MODE,
                    format!(
                        "the destination is a CLUSTER of {} master(s) covering all 16384 slots",
                        d.masters.len()
                    ),
                )
            } else {
                item(
                    items::DESTINATION_MODE,
                    CheckStatus::Failed,
                    format!(
                        "the destination cluster has {assigned} of 16384 slots assigned, cluster_state:{state}"
                    ),
                    "assign every slot on the destination cluster and wait for cluster_state:ok",
                )
            }
        }
    }
}

fn destination_role(destination: &DestView) -> PrecheckItem {
    let d = match dest_usable(destination) {
        Ok(d) => d,
        Err(why) => return not_run(items::DESTINATION_ROLE, why),
    };
    let replicas: Vec<String> = d
        .masters
        .iter()
        .filter(|n| n.role != "master")
        .map(|n| match &n.master_of {
            Some(m) => format!("{} is a replica of {m}", n.address),
            None => format!("{} has role {:?}", n.address, n.role),
        })
        .collect();
    if replicas.is_empty() {
        passed(items::DESTINATION_ROLE, "the destination is a master")
    } else {
        item(
            items::DESTINATION_ROLE,
            CheckStatus::Failed,
            format!(
                "{}: a replica rejects writes and its master would overwrite them",
                replicas.join("; ")
            ),
            "point spec.destination at the master, or run REPLICAOF NO ONE on the destination",
        )
    }
}

fn destination_version(source: &SourceView, destination: &DestView) -> PrecheckItem {
    let d = match dest_usable(destination) {
        Ok(d) => d,
        Err(why) => return not_run(items::DESTINATION_VERSION, why),
    };
    let probe = match source.usable() {
        Ok(p) => p,
        Err(why) => return not_run(items::DESTINATION_VERSION, why),
    };
    let Some(src) = parse_version(&probe.version) else {
        return not_run(
            items::DESTINATION_VERSION,
            format!("the source version {:?} is unknown", probe.version),
        );
    };
    let lowest = d
        .masters
        .iter()
        .filter_map(|n| parse_version(&n.version).map(|v| (v, n)))
        .min_by_key(|(v, _)| *v);
    let Some((dst, node)) = lowest else {
        return item(
            items::DESTINATION_VERSION,
            CheckStatus::Failed,
            "the destination did not report its version",
            "check that the destination is Redis",
        );
    };
    if dst >= src {
        passed(
            items::DESTINATION_VERSION,
            format!("destination {} ≥ source {}", node.version, probe.version),
        )
    } else {
        item(
            items::DESTINATION_VERSION,
            CheckStatus::Failed,
            format!(
                "destination {} runs Redis {}, older than the source's {}: it may not load the source's data types and encodings",
                node.address, node.version, probe.version
            ),
            "upgrade the destination to the source's version or later",
        )
    }
}

fn destination_empty(spec: &TaskSpec, destination: &DestView) -> PrecheckItem {
    let d = match dest_usable(destination) {
        Ok(d) => d,
        Err(why) => return not_run(items::DESTINATION_EMPTY, why),
    };
    let mut keys: BTreeMap<u32, u64> = BTreeMap::new();
    for n in &d.masters {
        for (db, k) in &n.keys_per_db {
            *keys.entry(*db).or_default() += k;
        }
    }
    let mut non_empty: Vec<String> = task::db_pairs(spec)
        .into_iter()
        .map(|(_, to)| to)
        .filter_map(|to| keys.get(&to).filter(|k| **k > 0).map(|k| (to, *k)))
        .map(|(db, k)| format!("db{db} ({k} keys)"))
        .collect();
    non_empty.dedup();
    if non_empty.is_empty() {
        return passed(
            items::DESTINATION_EMPTY,
            "every selected destination database is empty",
        );
    }
    let list = non_empty.join(", ");
    if spec.conflict_mode == ConflictMode::Overwrite as i32 {
        item(
            items::DESTINATION_EMPTY,
            CheckStatus::Warning,
            format!(
                "selected destination databases hold keys: {list}; source keys will replace destination keys of the same name, the others stay"
            ),
            "empty those databases first if the destination should equal the source",
        )
    } else {
        item(
            items::DESTINATION_EMPTY,
            CheckStatus::Failed,
            format!(
                "conflict mode INTERCEPT needs empty destination databases, but these hold keys: {list}"
            ),
            "empty those databases (FLUSHDB), map to empty ones with spec.db_mapping, or use conflict mode OVERWRITE",
        )
    }
}

fn destination_eviction(destination: &DestView) -> PrecheckItem {
    let d = match dest_usable(destination) {
        Ok(d) => d,
        Err(why) => return not_run(items::DESTINATION_EVICTION, why),
    };
    let mut evicting = Vec::new();
    let mut unknown = Vec::new();
    for n in &d.masters {
        match n.policy.as_deref() {
            Some("noeviction") => {}
            Some(p) => evicting.push(format!("{}: {p}", n.address)),
            None => unknown.push(n.address.clone()),
        }
    }
    if !evicting.is_empty() {
        item(
            items::DESTINATION_EVICTION,
            CheckStatus::Warning,
            format!(
                "maxmemory-policy is not noeviction ({}): under memory pressure the destination drops synced keys silently",
                evicting.join("; ")
            ),
            "CONFIG SET maxmemory-policy noeviction on the destination",
        )
    } else if !unknown.is_empty() {
        item(
            items::DESTINATION_EVICTION,
            CheckStatus::Warning,
            format!(
                "maxmemory-policy could not be read on {}",
                unknown.join(", ")
            ),
            "check that maxmemory-policy is noeviction",
        )
    } else {
        passed(
            items::DESTINATION_EVICTION,
            "maxmemory-policy is noeviction",
        )
    }
}

fn destination_memory(source: &SourceView, destination: &DestView) -> PrecheckItem {
    let d = match dest_usable(destination) {
        Ok(d) => d,
        Err(why) => return not_run(items::DESTINATION_MEMORY, why),
    };
    let probe = match source.usable() {
        Ok(p) => p,
        Err(why) => return not_run(items::DESTINATION_MEMORY, why),
    };
    let needed: u64 = probe.masters.iter().map(|m| m.used_memory).sum();
    let cluster = d.masters.len() > 1 || d.entry.cluster_enabled;
    let mut short = Vec::new();
    let mut unknown = Vec::new();
    for n in &d.masters {
        let Some(max) = n.maxmemory else {
            unknown.push(n.address.clone());
            continue;
        };
        if max == 0 {
            continue; // no limit
        }
        // In a cluster each master gets the share of the data its slots hold.
        let share = if cluster && n.slots > 0 {
            needed.saturating_mul(n.slots) / CLUSTER_SLOTS
        } else {
            needed
        };
        let free = max.saturating_sub(n.used_memory);
        if free < share {
            short.push(format!(
                "{}: {free} bytes free (maxmemory {max}, used {}) for {share} bytes",
                n.address, n.used_memory
            ));
        }
    }
    if !short.is_empty() {
        item(
            items::DESTINATION_MEMORY,
            CheckStatus::Failed,
            format!(
                "the source uses {needed} bytes but the destination lacks room: {}",
                short.join("; ")
            ),
            "raise maxmemory on the destination (or free memory) so it can hold the source's data",
        )
    } else if !unknown.is_empty() {
        item(
            items::DESTINATION_MEMORY,
            CheckStatus::Warning,
            format!(
                "maxmemory could not be read on {}; the source uses {needed} bytes",
                unknown.join(", ")
            ),
            "check that the destination has room for the source's data",
        )
    } else if d.masters.iter().all(|n| n.maxmemory == Some(0)) {
        passed(
            items::DESTINATION_MEMORY,
            format!("no maxmemory limit on the destination; the source uses {needed} bytes"),
        )
    } else {
        passed(
            items::DESTINATION_MEMORY,
            format!("the destination has room for the source's {needed} bytes"),
        )
    }
}

fn destination_modules(source: &SourceView, destination: &DestView) -> PrecheckItem {
    let d = match dest_usable(destination) {
        Ok(d) => d,
        Err(why) => return not_run(items::DESTINATION_MODULES, why),
    };
    let probe = match source.usable() {
        Ok(p) => p,
        Err(why) => return not_run(items::DESTINATION_MODULES, why),
    };
    let mut used: Vec<String> = probe
        .masters
        .iter()
        .flat_map(|m| m.modules.iter().cloned())
        .collect();
    used.sort();
    used.dedup();
    if used.is_empty() {
        return passed(items::DESTINATION_MODULES, "the source uses no modules");
    }
    let mut missing = Vec::new();
    for module in &used {
        for n in &d.masters {
            if !n.modules.iter().any(|m| m.eq_ignore_ascii_case(module)) {
                missing.push(format!("{module} on {}", n.address));
            }
        }
    }
    if missing.is_empty() {
        passed(
            items::DESTINATION_MODULES,
            format!(
                "source modules loaded on the destination: {}",
                used.join(", ")
            ),
        )
    } else {
        item(
            items::DESTINATION_MODULES,
            CheckStatus::Failed,
            format!(
                "modules the source uses are missing on the destination: {}",
                missing.join("; ")
            ),
            "load the same modules on the destination (loadmodule in redis.conf)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis_sync_proto::v1::{ProbeError, SourceMaster};

    fn spec(conflict: ConflictMode) -> TaskSpec {
        TaskSpec {
            source: Some(RedisEndpoint {
                mode: InstanceMode::Standalone as i32,
                address: "s:1".into(),
                ..Default::default()
            }),
            destination: Some(RedisEndpoint {
                mode: InstanceMode::Standalone as i32,
                address: "d:1".into(),
                ..Default::default()
            }),
            conflict_mode: conflict as i32,
            databases: vec![0, 1],
            ..Default::default()
        }
    }

    fn probe() -> SourceView {
        SourceView::Probed {
            endpoint: "http://i:1".into(),
            probe: ProbeSourceResponse {
                mode: InstanceMode::Standalone as i32,
                version: "6.2.14".into(),
                masters: vec![SourceMaster {
                    shard_id: "standalone".into(),
                    address: "s:1".into(),
                    version: "6.2.14".into(),
                    role: "master".into(),
                    psync_allowed: true,
                    used_memory: 10_000_000,
                    repl_backlog_size: 1024 * 1024,
                    repl_timeout_seconds: 60,
                    ..Default::default()
                }],
                ..Default::default()
            },
        }
    }

    fn dest(f: impl FnOnce(&mut DestNode)) -> DestView {
        let mut n = DestNode {
            address: "d:1".into(),
            version: "7.0.15".into(),
            role: "master".into(),
            used_memory: 1_000_000,
            maxmemory: Some(0),
            policy: Some("noeviction".into()),
            ..Default::default()
        };
        f(&mut n);
        DestView::Found(DestInfo {
            entry: n.clone(),
            masters: vec![n],
            cluster_state: None,
            slots_assigned: None,
            wanted_mode: InstanceMode::Standalone as i32,
        })
    }

    fn status_of(items: &[PrecheckItem], name: &str) -> CheckStatus {
        let i = items.iter().find(|i| i.name == name).unwrap();
        CheckStatus::try_from(i.status).unwrap()
    }

    #[test]
    fn judged_items() {
        let s = spec(ConflictMode::Intercept);
        let items = judge(&s, &probe(), &dest(|_| {}));
        assert_eq!(
            status_of(&items, items::SOURCE_REPLICATION_SETTINGS),
            CheckStatus::Warning
        );
        assert_eq!(
            status_of(&items, items::DESTINATION_VERSION),
            CheckStatus::Passed
        );
        assert!(
            !items.iter().any(|i| i.status == CheckStatus::Failed as i32),
            "{items:#?}"
        );

        let items = judge(&s, &probe(), &dest(|n| n.version = "5.0.6".into()));
        assert_eq!(
            status_of(&items, items::DESTINATION_VERSION),
            CheckStatus::Failed
        );

        let items = judge(
            &s,
            &probe(),
            &dest(|n| {
                n.maxmemory = Some(5_000_000);
            }),
        );
        assert_eq!(
            status_of(&items, items::DESTINATION_MEMORY),
            CheckStatus::Failed
        );

        let items = judge(
            &s,
            &probe(),
            &dest(|n| {
                n.keys_per_db.insert(1, 3);
                n.keys_per_db.insert(5, 1);
            }),
        );
        assert_eq!(
            status_of(&items, items::DESTINATION_EMPTY),
            CheckStatus::Failed
        );
        let reason = &items
            .iter()
            .find(|i| i.name == items::DESTINATION_EMPTY)
            .unwrap()
            .reason;
        assert!(
            reason.contains("db1 (3 keys)") && !reason.contains("db5"),
            "{reason}"
        );
        let items = judge(
            &spec(ConflictMode::Overwrite),
            &probe(),
            &dest(|n| {
                n.keys_per_db.insert(1, 3);
            }),
        );
        assert_eq!(
            status_of(&items, items::DESTINATION_EMPTY),
            CheckStatus::Warning
        );

        let items = judge(
            &s,
            &probe(),
            &dest(|n| {
                n.role = "slave".into();
                n.master_of = Some("m:1".into());
            }),
        );
        assert_eq!(
            status_of(&items, items::DESTINATION_ROLE),
            CheckStatus::Failed
        );
    }

    #[test]
    fn a_side_that_cannot_be_inspected_leaves_its_items_unrun() {
        let s = spec(ConflictMode::Intercept);
        let no_ingest = SourceView::NoIngest {
            reason: "gone".into(),
            fix: "f".into(),
        };
        let items = judge(&s, &no_ingest, &dest(|_| {}));
        assert_eq!(
            status_of(&items, items::INGEST_REACHABLE),
            CheckStatus::Failed
        );
        assert_eq!(
            status_of(&items, items::SOURCE_VERSION),
            CheckStatus::Unspecified
        );
        assert_eq!(
            status_of(&items, items::DESTINATION_EMPTY),
            CheckStatus::Passed
        );
        assert_eq!(
            status_of(&items, items::DESTINATION_MEMORY),
            CheckStatus::Unspecified
        );

        let auth = SourceView::Probed {
            endpoint: "http://i:1".into(),
            probe: ProbeSourceResponse {
                error: Some(ProbeError {
                    kind: ProbeErrorKind::Authentication as i32,
                    message: "WRONGPASS".into(),
                }),
                ..Default::default()
            },
        };
        let items = judge(
            &s,
            &auth,
            &DestView::Unreachable {
                reason: "r".into(),
                fix: "f".into(),
            },
        );
        assert_eq!(
            status_of(&items, items::INGEST_REACHABLE),
            CheckStatus::Passed
        );
        assert_eq!(
            status_of(&items, items::SOURCE_REACHABLE),
            CheckStatus::Failed
        );
        assert_eq!(
            status_of(&items, items::DESTINATION_REACHABLE),
            CheckStatus::Failed
        );
        assert_eq!(
            status_of(&items, items::DESTINATION_ROLE),
            CheckStatus::Unspecified
        );
    }

    #[test]
    fn cluster_nodes_parsing() {
        let text = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:7001@17001,host master - 0 0 2 connected 5461-10922 [5461->-c]
c :7002@17002 master - 0 0 3 connected 10923-16383
d 127.0.0.1:7003@17003 slave a 0 0 1 connected
e 127.0.0.1:7004@17004 master,fail - 0 0 4 disconnected 1
f 127.0.0.1:7005@17005 master,fail? - 0 0 5 connected 2
not a node line
";
        let m = cluster_masters(text, "10.0.0.1");
        assert_eq!(
            m,
            vec![
                ("127.0.0.1:7000".to_owned(), 5461),
                ("127.0.0.1:7001".to_owned(), 5462),
                ("10.0.0.1:7002".to_owned(), 5461)
            ]
        );
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("7.0.15"), Some((7, 0, 15)));
        assert_eq!(parse_version("2.8"), Some((2, 8, 0)));
        assert_eq!(parse_version("x"), None);
        assert!(parse_version("5.0.6") < parse_version("7.0.15"));
    }

    #[test]
    fn info_parsing() {
        let info = parse_info(
            "# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=0\r\ndb12:keys=1,expires=0,avg_ttl=0\r\nrole:master\r\n",
        );
        assert_eq!(keyspace(&info), BTreeMap::from([(0, 3), (12, 1)]));
        assert_eq!(info.get("role").map(String::as_str), Some("master"));
    }
}
