//! The numbers ingest publishes, per subscriber and shard.

use redis_sync_telemetry::{Counter, Gauge, Metrics};

/// Metrics of one shard of one subscriber.
#[derive(Debug, Clone)]
pub struct ShardMetrics {
    /// Bytes received from the master (snapshot and stream).
    pub bytes_received: Counter,
    /// Change events sent to the subscriber.
    pub events_sent: Counter,
    /// Bytes in the spool.
    pub spool_bytes: Gauge,
    /// 1 while the replica link is connected.
    pub link_up: Gauge,
    /// Replication offset received from the master.
    pub source_offset: Gauge,
    /// Replication offset the subscriber acknowledged.
    pub acked_offset: Gauge,
    /// Times the link broke and reconnected.
    pub link_errors: Counter,
    /// Snapshot keys skipped because they had expired.
    pub expired_keys_skipped: Counter,
}

impl ShardMetrics {
    /// Registers (or finds) the metrics of `subscriber` / `shard` in `metrics`.
    pub fn new(metrics: &Metrics, subscriber: &str, shard: &str) -> Self {
        let l: &[(&str, &str)] = &[("subscriber", subscriber), ("shard", shard)];
        ShardMetrics {
            bytes_received: metrics.counter(
                "redis_sync_ingest_bytes_received_total",
                "Bytes received from the source master (snapshot and stream).",
                l,
            ),
            events_sent: metrics.counter(
                "redis_sync_ingest_events_sent_total",
                "Change events sent to the subscriber.",
                l,
            ),
            spool_bytes: metrics.gauge(
                "redis_sync_ingest_spool_bytes",
                "Bytes held in the spool.",
                l,
            ),
            link_up: metrics.gauge(
                "redis_sync_ingest_link_up",
                "1 while the replica link to the source master is connected.",
                l,
            ),
            source_offset: metrics.gauge(
                "redis_sync_ingest_source_offset",
                "Replication offset received from the source master.",
                l,
            ),
            acked_offset: metrics.gauge(
                "redis_sync_ingest_acked_offset",
                "Replication offset the subscriber acknowledged.",
                l,
            ),
            link_errors: metrics.counter(
                "redis_sync_ingest_link_errors_total",
                "Times the replica link broke and reconnected.",
                l,
            ),
            expired_keys_skipped: metrics.counter(
                "redis_sync_ingest_expired_keys_skipped_total",
                "Snapshot keys skipped because they had already expired.",
                l,
            ),
        }
    }
}
