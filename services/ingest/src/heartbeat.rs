//! The heartbeat writer: a timestamp key written to each source master at a fixed
//! interval, which comes back through the replication stream so the subscriber can measure
//! the end-to-end delay.

use std::{sync::Arc, time::Duration};

use redis_sync_resp::Frame;

use crate::{
    cluster::{self, SlotRange},
    conn::{Credentials, RedisConn},
    decode::snapshot::unix_ms,
    stop::StopSignal,
    tls::Connector,
    topology::SourceView,
};

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "DTS_REDIS_TIMESTAMP_HEARTBEAT";
/// Default interval.
pub const DEFAULT_INTERVAL_MS: u32 = 1000;

/// What one heartbeat writer writes, and where.
#[derive(Debug, Clone)]
pub struct HeartbeatTarget {
    /// "host:port" of the master (a standalone source; a cluster shard starts here).
    pub addr: String,
    /// Its credentials.
    pub credentials: Credentials,
    /// Opens the connection (TLS or plain).
    pub connector: Connector,
    /// `<prefix>:<subscriber id>`: the key of a standalone source; a cluster master's key
    /// adds `:{tag}` with a hash tag in a slot the master owns.
    pub key_base: String,
    /// Cluster only: the subscriber's view and the shard id, so the heartbeat follows the
    /// shard to its new master after a failover and its key to a slot the master still
    /// owns after resharding.
    pub cluster: Option<(Arc<SourceView>, String)>,
    /// Time between two writes.
    pub interval: Duration,
}

impl HeartbeatTarget {
    /// The key's time to live: long enough to survive a few missed writes, and at least a
    /// minute so a short pause of ingest does not make it vanish.
    pub fn ttl_ms(&self) -> u64 {
        (self.interval.as_millis() as u64 * 10).max(60_000)
    }

    /// Where to write now, and which key.
    fn locate(&self, cache: &mut Option<(Vec<SlotRange>, String)>) -> Option<(String, String)> {
        let Some((view, shard)) = &self.cluster else {
            return Some((self.addr.clone(), self.key_base.clone()));
        };
        let home = view.home(shard)?;
        let tag = match cache {
            Some((slots, tag)) if *slots == home.slots => tag.clone(),
            _ => {
                let tag = cluster::hash_tag_for(&home.slots)?;
                *cache = Some((home.slots.clone(), tag.clone()));
                tag
            }
        };
        Some((home.addr, format!("{}:{{{tag}}}", self.key_base)))
    }
}

/// Writes heartbeats until `cancel` is set. Failures are logged and retried: a missing
/// heartbeat only makes the delay unknown, it must not stop the sync.
pub async fn run(target: HeartbeatTarget, mut cancel: StopSignal) {
    let ttl = target.ttl_ms().to_string();
    let mut conn: Option<RedisConn> = None;
    let mut tags = None;
    let mut tick = tokio::time::interval(target.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.requested() => return,
        }
        let Some((addr, key)) = target.locate(&mut tags) else {
            continue;
        };
        if conn.as_ref().is_some_and(|c| c.addr() != addr) {
            // The shard moved (failover): write to its new master.
            conn = None;
        }
        if conn.is_none() {
            match connect(&target, &addr).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    if !warned {
                        tracing::warn!(error = %e, %key, "cannot write heartbeats");
                        warned = true;
                    }
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let now = unix_ms().to_string();
        match c
            .command(&[
                b"SET".as_slice(),
                key.as_bytes(),
                now.as_bytes(),
                b"PX",
                ttl.as_bytes(),
            ])
            .await
        {
            Ok(Frame::Error(e)) => {
                if !warned {
                    tracing::warn!(error = %String::from_utf8_lossy(&e), %key, "heartbeat write refused");
                    warned = true;
                }
                if target.cluster.is_some() {
                    // MOVED, READONLY, CLUSTERDOWN: the topology changed under us; the
                    // next tick asks the view again on a fresh connection.
                    conn = None;
                }
            }
            Ok(_) => warned = false,
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat connection lost");
                conn = None;
            }
        }
    }
}

async fn connect(target: &HeartbeatTarget, addr: &str) -> Result<RedisConn, String> {
    let mut c = target
        .connector
        .connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    target
        .credentials
        .authenticate(&mut c)
        .await
        .map_err(|e| e.to_string())?;
    // Make sure the key lands in db 0 whatever the server's defaults.
    match c
        .command(&[b"SELECT".as_slice(), b"0"])
        .await
        .map_err(|e| e.to_string())?
    {
        Frame::Error(e) => Err(String::from_utf8_lossy(&e).into_owned()),
        _ => Ok(c),
    }
}
