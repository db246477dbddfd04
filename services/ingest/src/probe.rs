//! ProbeSource: inspects a source without changing it.
//!
//! The PSYNC check does the replica handshake up to `REPLCONF capa` and stops there: that
//! is where a master refuses a replica's credentials, and stopping before `PSYNC` means no
//! snapshot is ever triggered by a probe.

use std::collections::HashMap;

use futures_util::future::join_all;
use redis_sync_proto::v1::{
    InstanceMode, ProbeError, ProbeErrorKind, ProbeSourceResponse, RedisEndpoint, SourceMaster,
};
use redis_sync_resp::Frame;

use crate::{
    cluster::{self, ClusterMaster},
    conn::{self, AuthError, ConnError, Credentials, RedisConn},
    tls::Connector,
    topology,
};

/// Shard id of a standalone source.
pub const STANDALONE_SHARD: &str = "standalone";

fn probe_error(kind: ProbeErrorKind, message: impl Into<String>) -> ProbeError {
    ProbeError {
        kind: kind as i32,
        message: message.into(),
    }
}

fn conn_error(e: &ConnError) -> ProbeError {
    if e.is_unreachable() {
        probe_error(ProbeErrorKind::Unreachable, e.to_string())
    } else {
        probe_error(ProbeErrorKind::Protocol, e.to_string())
    }
}

fn auth_error(e: &AuthError) -> ProbeError {
    match e {
        AuthError::Conn(c) => conn_error(c),
        AuthError::Refused { .. } => probe_error(ProbeErrorKind::Authentication, e.to_string()),
    }
}

fn is_auth_reply(err: &str) -> bool {
    err.starts_with("NOAUTH")
        || err.starts_with("NOPERM")
        || err.starts_with("WRONGPASS")
        || err.contains("operation not permitted")
}

/// Connects and authenticates, classifying failures as a probe reports them.
async fn open(
    connector: &Connector,
    addr: &str,
    credentials: &Credentials,
) -> Result<RedisConn, ProbeError> {
    let mut c = connector.connect(addr).await.map_err(|e| conn_error(&e))?;
    credentials
        .authenticate(&mut c)
        .await
        .map_err(|e| auth_error(&e))?;
    Ok(c)
}

/// INFO, with an authentication error when the server wants a password we did not give.
async fn info(c: &mut RedisConn) -> Result<Vec<(String, String)>, ProbeError> {
    match conn::info(c, None).await.map_err(|e| conn_error(&e))? {
        Ok(info) => Ok(info),
        Err(e) if is_auth_reply(&e) => Err(probe_error(
            ProbeErrorKind::Authentication,
            format!("{}: {e}", c.addr()),
        )),
        Err(e) => Err(probe_error(
            ProbeErrorKind::Protocol,
            format!("{}: INFO answered {e}", c.addr()),
        )),
    }
}

/// Masters of a cluster, from any one node.
pub async fn cluster_masters(c: &mut RedisConn) -> Result<Vec<ClusterMaster>, String> {
    Ok(cluster::masters(&topology::cluster_nodes(c).await?))
}

/// Inspects the source `endpoint`, connecting with `connector` (its TLS settings).
pub async fn probe(endpoint: &RedisEndpoint, connector: &Connector) -> ProbeSourceResponse {
    let failed = |error: ProbeError| ProbeSourceResponse {
        error: Some(error),
        ..Default::default()
    };
    let credentials = Credentials {
        username: endpoint.username.clone(),
        password: endpoint.password.clone(),
    };
    let mut entry = match open(connector, &endpoint.address, &credentials).await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let entry_info = match info(&mut entry).await {
        Ok(i) => i,
        Err(e) => return failed(e),
    };
    let is_cluster = conn::info_field(&entry_info, "cluster_enabled") == Some("1")
        || conn::info_field(&entry_info, "redis_mode") == Some("cluster");
    let (mode, masters, all_slots) = if is_cluster {
        match cluster_masters(&mut entry).await {
            Ok(m) => {
                let all = cluster::covers_all_slots(&m);
                (InstanceMode::Cluster, m, all)
            }
            Err(e) => {
                return failed(probe_error(
                    ProbeErrorKind::Protocol,
                    format!("{}: {e}", endpoint.address),
                ));
            }
        }
    } else {
        let standalone = ClusterMaster {
            id: STANDALONE_SHARD.to_owned(),
            addr: endpoint.address.clone(),
            slots: Vec::new(),
        };
        (InstanceMode::Standalone, vec![standalone], false)
    };
    drop(entry);
    let probed: Vec<SourceMaster> = join_all(
        masters
            .iter()
            .map(|m| probe_master(connector, m, &credentials)),
    )
    .await;
    let version = probed
        .iter()
        .map(|m| m.version.as_str())
        .filter(|v| !v.is_empty())
        .min_by_key(|v| version_key(v))
        .unwrap_or_default()
        .to_owned();
    ProbeSourceResponse {
        mode: mode as i32,
        version,
        masters: probed,
        error: None,
        all_slots_covered: all_slots,
    }
}

fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

async fn probe_master(
    connector: &Connector,
    master: &ClusterMaster,
    credentials: &Credentials,
) -> SourceMaster {
    let mut out = SourceMaster {
        shard_id: master.id.clone(),
        address: master.addr.clone(),
        slots: master.slots.iter().map(ToString::to_string).collect(),
        ..Default::default()
    };
    let mut c = match open(connector, &master.addr, credentials).await {
        Ok(c) => c,
        Err(e) => {
            out.psync_error = e.message.clone();
            out.error = Some(e);
            return out;
        }
    };
    let info = match info(&mut c).await {
        Ok(i) => i,
        Err(e) => {
            out.psync_error = e.message.clone();
            out.error = Some(e);
            return out;
        }
    };
    out.version = conn::info_field(&info, "valkey_version")
        .or_else(|| conn::info_field(&info, "redis_version"))
        .unwrap_or_default()
        .to_owned();
    out.role = conn::info_field(&info, "role")
        .unwrap_or_default()
        .to_owned();
    out.used_memory = conn::info_field(&info, "used_memory")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    out.keys_per_db = conn::keyspace(&info).into_iter().collect::<HashMap<_, _>>();
    out.repl_backlog_size = config_get(&mut c, "repl-backlog-size").await;
    out.repl_timeout_seconds = config_get(&mut c, "repl-timeout").await;
    if version_key(&out.version)
        .first()
        .is_some_and(|&major| major >= 4)
    {
        out.modules = module_list(&mut c).await;
    }
    drop(c);
    match replica_handshake(connector, &master.addr, credentials).await {
        Ok(()) => out.psync_allowed = true,
        Err(e) => out.psync_error = e,
    }
    out
}

/// `CONFIG GET name` as a number; 0 when refused (CONFIG is often renamed or disabled).
async fn config_get(c: &mut RedisConn, name: &str) -> u64 {
    match c
        .command(&[b"CONFIG".as_slice(), b"GET", name.as_bytes()])
        .await
    {
        Ok(Frame::Array(items)) => items
            .get(1)
            .and_then(conn::reply_text)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// Names of loaded modules. Replies differ between versions (flat arrays before 7.0,
/// maps rendered as arrays after): the value after a "name" field is the name.
async fn module_list(c: &mut RedisConn) -> Vec<String> {
    let Ok(Frame::Array(modules)) = c.command(&[b"MODULE".as_slice(), b"LIST"]).await else {
        return Vec::new();
    };
    modules
        .iter()
        .filter_map(|m| match m {
            Frame::Array(fields) => fields
                .windows(2)
                .find(|w| conn::reply_text(&w[0]).as_deref() == Some("name"))
                .and_then(|w| conn::reply_text(&w[1])),
            _ => None,
        })
        .collect()
}

/// The replica handshake without PSYNC. `Err` carries the server's refusal.
async fn replica_handshake(
    connector: &Connector,
    addr: &str,
    credentials: &Credentials,
) -> Result<(), String> {
    let mut c = connector.connect(addr).await.map_err(|e| e.to_string())?;
    let pong = c
        .command(&[b"PING".as_slice()])
        .await
        .map_err(|e| e.to_string())?;
    if let Some(e) = conn::reply_error(&pong)
        && !is_auth_reply(&e)
    {
        return Err(format!("PING answered {e}"));
    }
    credentials
        .authenticate(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    let reply = c
        .command(&[b"REPLCONF".as_slice(), b"listening-port", b"0"])
        .await
        .map_err(|e| e.to_string())?;
    if let Some(e) = conn::reply_error(&reply) {
        return Err(format!("REPLCONF listening-port answered {e}"));
    }
    let reply = c
        .command(&[b"REPLCONF".as_slice(), b"capa", b"eof", b"capa", b"psync2"])
        .await
        .map_err(|e| e.to_string())?;
    if let Some(e) = conn::reply_error(&reply) {
        // Redis 2.8 knows no capabilities and says so; it still serves PSYNC (disk
        // snapshots only). Anything else is a refusal.
        if !e.contains("Unrecognized REPLCONF option") {
            return Err(format!("REPLCONF capa answered {e}"));
        }
        tracing::debug!(%addr, "master predates REPLCONF capa (Redis 2.8): disk snapshots only");
    }
    Ok(())
}
