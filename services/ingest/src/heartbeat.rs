//! The heartbeat writer: a timestamp key written to each source master at a fixed
//! interval, which comes back through the replication stream so the subscriber can measure
//! the end-to-end delay.

use std::time::Duration;

use redis_sync_resp::Frame;

use crate::{
    conn::{Credentials, RedisConn},
    decode::snapshot::unix_ms,
    stop::StopSignal,
};

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "DTS_REDIS_TIMESTAMP_HEARTBEAT";
/// Default interval.
pub const DEFAULT_INTERVAL_MS: u32 = 1000;

/// What one heartbeat writer writes, and where.
#[derive(Debug, Clone)]
pub struct HeartbeatTarget {
    /// "host:port" of the master.
    pub addr: String,
    /// Its credentials.
    pub credentials: Credentials,
    /// The key: `<prefix>:<subscriber id>`, plus `:{tag}` on a cluster master.
    pub key: String,
    /// Time between two writes.
    pub interval: Duration,
}

impl HeartbeatTarget {
    /// The key's time to live: long enough to survive a few missed writes, and at least a
    /// minute so a short pause of ingest does not make it vanish.
    pub fn ttl_ms(&self) -> u64 {
        (self.interval.as_millis() as u64 * 10).max(60_000)
    }
}

/// Writes heartbeats until `cancel` is set. Failures are logged and retried: a missing
/// heartbeat only makes the delay unknown, it must not stop the sync.
pub async fn run(target: HeartbeatTarget, mut cancel: StopSignal) {
    let ttl = target.ttl_ms().to_string();
    let mut conn: Option<RedisConn> = None;
    let mut tick = tokio::time::interval(target.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.requested() => return,
        }
        if conn.is_none() {
            match connect(&target).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    if !warned {
                        tracing::warn!(error = %e, key = %target.key, "cannot write heartbeats");
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
                target.key.as_bytes(),
                now.as_bytes(),
                b"PX",
                ttl.as_bytes(),
            ])
            .await
        {
            Ok(Frame::Error(e)) => {
                if !warned {
                    tracing::warn!(error = %String::from_utf8_lossy(&e), key = %target.key, "heartbeat write refused");
                    warned = true;
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

async fn connect(target: &HeartbeatTarget) -> Result<RedisConn, String> {
    let mut c = RedisConn::connect(&target.addr)
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
