//! Ingest against real Redis servers of every supported version, through its gRPC API.

mod support;

use std::time::Duration;

use redis_sync_proto::v1::{InstanceMode, change_event::Kind};
use redis_sync_testkit::{RedisServer, RedisVersion};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// A server whose master sends no PING during the test, so that offsets taken right
/// after a write are exactly where the stream ends.
fn server(version: RedisVersion, extra: &[(&str, &str)]) -> RedisServer {
    let mut b = RedisServer::builder(version).config("repl-ping-slave-period", "3600");
    for (k, v) in extra {
        b = b.config(*k, *v);
    }
    b.start().unwrap()
}

fn seed(server: &RedisServer) {
    cmd(server, &["SET", "s1", "v1"]);
    cmd(server, &["RPUSH", "list", "a", "b", "c"]);
    cmd(server, &["HSET", "hash", "f", "v"]);
    cmd(server, &["SADD", "set", "m1", "m2"]);
    cmd(server, &["ZADD", "zset", "1.5", "a", "-2", "b"]);
    cmd(server, &["SET", "with-ttl", "v", "EX", "1000"]);
    let mut c = server.client().unwrap();
    c.cmd_str(&["SELECT", "2"]).unwrap();
    c.cmd_str(&["SET", "in-db-2", "x"]).unwrap();
}

/// The writes every version must deliver, in order, after its snapshot.
fn write_sequence(server: &RedisServer) {
    cmd(server, &["SET", "a", "1"]);
    cmd(server, &["INCR", "a"]);
    cmd(server, &["LPUSH", "list", "x"]);
    cmd(server, &["HSET", "hash", "f2", "v2"]);
    let mut c = server.client().unwrap();
    for args in [
        &["MULTI"][..],
        &["SET", "t1", "1"],
        &["SET", "t2", "2"],
        &["EXEC"],
    ] {
        assert!(c.cmd_str(args).unwrap().as_error().is_none());
    }
    c.cmd_str(&["SELECT", "3"]).unwrap();
    c.cmd_str(&["SET", "k3", "v3"]).unwrap();
}

fn stream_after_snapshot(sub: &Subscription) -> Vec<String> {
    let end = sub.last_index(is_end).expect("snapshot end");
    sub.events[end + 1..]
        .iter()
        .map(|g| describe_command(&g.event.kind))
        .collect()
}

fn describe_command(kind: &Option<Kind>) -> String {
    match kind {
        Some(Kind::Command(c)) => format!("db{} {}", c.db, command_text(c)),
        Some(Kind::Transaction(t)) => {
            format!(
                "multi[{}]",
                t.commands
                    .iter()
                    .map(|c| format!("db{} {}", c.db, command_text(c)))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
        other => format!("{other:?}"),
    }
}

/// Waits until the shard's end position has reached the source's replication offset, and
/// returns that offset.
async fn caught_up(sub: &mut Subscription, server: &RedisServer, shard: &str) -> u64 {
    let target = master_offset(server);
    sub.until(&format!("end position {target}"), WAIT, |s| {
        s.ends
            .get(shard)
            .is_some_and(|p| !p.in_snapshot && p.offset >= target)
    })
    .await;
    let end = sub.ends[shard].offset;
    assert_eq!(end, target, "end position passes the source's offset");
    target
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_snapshot_then_stream() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    for version in RedisVersion::ALL {
        // Disk snapshots here (7.0 defaults to diskless); diskless has its own test.
        let extra: &[(&str, &str)] = if version.supports_diskless() {
            &[("repl-diskless-sync", "no")]
        } else {
            &[]
        };
        let server = server(version, extra);
        seed(&server);
        let id = format!("versions-{}", version.label().replace('.', "-"));
        let mut sub = Subscription::open(
            &mut client,
            request(
                &id,
                endpoint(&server.addr(), InstanceMode::Standalone),
                vec![],
                None,
            ),
        )
        .await;
        sub.until("snapshot end", WAIT, |s| s.count(is_end) == 1)
            .await;

        let Some(Kind::SnapshotBegin(begin)) = &sub.events[0].event.kind else {
            panic!("{version}: {:?}", sub.summary())
        };
        assert_eq!(begin.rdb_version, version.rdb_version(), "{version}");
        assert!(
            version.matches(&begin.source_version) || version == RedisVersion::V2_8,
            "{version}: {}",
            begin.source_version
        );
        assert_eq!(begin.estimated_keys, 7, "{version}");
        assert!(
            begin.estimated_bytes > 0,
            "{version}: a disk transfer announces its size"
        );
        assert_eq!(begin.reason, "first sync");
        assert_eq!(
            snapshot_keys(&sub),
            server_keys(&server),
            "{version}: snapshot keys"
        );
        let ttl = sub.events.iter().find_map(|g| match &g.event.kind {
            Some(Kind::Key(k)) if k.key == b"with-ttl" => Some(k.expire_at_ms),
            _ => None,
        });
        assert!(
            ttl.is_some_and(|t| t > 1_600_000_000_000),
            "{version}: absolute expiry {ttl:?}"
        );

        write_sequence(&server);
        let offset = caught_up(&mut sub, &server, "standalone").await;
        let got = stream_after_snapshot(&sub);
        let want = [
            "db0 set a 1",
            "db0 incr a",
            "db0 lpush list x",
            "db0 hset hash f2 v2",
            "multi[db0 set t1 1; db0 set t2 2]",
            "db3 set k3 v3",
        ];
        assert_eq!(got, want, "{version}");
        let last = sub.events.last().unwrap().event.position.clone().unwrap();
        assert_eq!(
            (last.offset, last.db),
            (offset, 3),
            "{version}: last event ends at the source's offset"
        );
        let Some(Kind::Transaction(t)) = &sub.events[sub.events.len() - 2].event.kind else {
            panic!()
        };
        assert_eq!(t.commands[0].key_indexes, vec![0]);

        // While the server runs, its link reports itself in the metrics.
        let metrics = ingest.metrics.render();
        for name in [
            "redis_sync_ingest_bytes_received_total",
            "redis_sync_ingest_events_sent_total",
            "redis_sync_ingest_link_up",
            "redis_sync_ingest_source_offset",
            "redis_sync_ingest_spool_bytes",
        ] {
            let line = metrics
                .lines()
                .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&format!("\"{id}\"")))
                .unwrap_or_else(|| panic!("{name} in {metrics}"));
            assert!(!line.ends_with(" 0"), "{line}");
        }
    }
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diskless_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    for version in RedisVersion::ALL
        .into_iter()
        .filter(|v| v.supports_diskless())
    {
        let server = server(
            version,
            &[
                ("repl-diskless-sync", "yes"),
                ("repl-diskless-sync-delay", "0"),
            ],
        );
        seed(&server);
        let id = format!("diskless-{}", version.label().replace('.', "-"));
        let mut sub = Subscription::open(
            &mut client,
            request(
                &id,
                endpoint(&server.addr(), InstanceMode::Standalone),
                vec![],
                None,
            ),
        )
        .await;
        sub.until("snapshot end", WAIT, |s| s.count(is_end) == 1)
            .await;
        let Some(Kind::SnapshotBegin(begin)) = &sub.events[0].event.kind else {
            panic!()
        };
        assert_eq!(
            begin.estimated_bytes, 0,
            "{version}: a diskless transfer has no announced size"
        );
        assert_eq!(snapshot_keys(&sub), server_keys(&server), "{version}");
        // The master holds the stream back until the first ACK after a diskless transfer.
        cmd(&server, &["SET", "after", "1"]);
        caught_up(&mut sub, &server, "standalone").await;
        assert_eq!(
            stream_after_snapshot(&sub),
            ["db0 set after 1"],
            "{version}"
        );
    }
    ingest.stop().await;
}

/// Counts INCR commands on `key` after the snapshot.
fn incrs(sub: &Subscription, from: usize) -> usize {
    sub.events[from..]
        .iter()
        .filter(|g| matches!(&g.event.kind, Some(Kind::Command(c)) if c.name.eq_ignore_ascii_case(b"incr")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_acknowledged_position_with_a_partial_resync() {
    for version in [RedisVersion::V2_8, RedisVersion::V7_0] {
        let dir = tempfile::tempdir().unwrap();
        let server = server(version, &[]);
        seed(&server);
        let source = endpoint(&server.addr(), InstanceMode::Standalone);

        let ingest = RunningIngest::start(dir.path()).await;
        let mut client = ingest.client().await;
        let mut sub = Subscription::open(
            &mut client,
            request("restart", source.clone(), vec![], None),
        )
        .await;
        sub.until("snapshot end", WAIT, |s| s.count(is_end) == 1)
            .await;
        let stream_start = sub.events.len();
        for _ in 0..5 {
            cmd(&server, &["INCR", "counter"]);
        }
        sub.until("5 INCR", WAIT, |s| incrs(s, stream_start) == 5)
            .await;
        // Acknowledge the third INCR only: the two after it must come again, once.
        let third = sub.events[stream_start..]
            .iter()
            .filter(|g| matches!(&g.event.kind, Some(Kind::Command(_))))
            .nth(2)
            .unwrap()
            .event
            .position
            .clone()
            .unwrap();
        let segments = || {
            std::fs::read_dir(dir.path().join("restart/standalone"))
                .unwrap()
                .count()
        };
        assert_eq!(segments(), 2, "{version}: the snapshot and the stream");
        acknowledge(&mut client, "restart", "standalone", third.clone()).await;
        assert_eq!(
            segments(),
            1,
            "{version}: acknowledging a stream position trims the snapshot"
        );
        drop(sub);
        ingest.stop().await;

        for _ in 0..5 {
            cmd(&server, &["INCR", "counter"]);
        }
        let full_before = server.info_stat("sync_full").unwrap();
        let partial_before = server.info_stat("sync_partial_ok").unwrap();

        let ingest = RunningIngest::start(dir.path()).await;
        let mut client = ingest.client().await;
        let start = vec![redis_sync_proto::v1::ShardPosition {
            shard_id: "standalone".into(),
            position: Some(third),
        }];
        let mut sub =
            Subscription::open(&mut client, request("restart", source.clone(), start, None)).await;
        caught_up(&mut sub, &server, "standalone").await;
        assert_eq!(incrs(&sub, 0), 7, "{version}: {:#?}", sub.summary());
        assert_eq!(
            sub.events.len(),
            7,
            "{version}: nothing but the INCRs: {:#?}",
            sub.summary()
        );
        assert_eq!(
            server.info_stat("sync_full").unwrap(),
            full_before,
            "{version}: no full resync"
        );
        assert_eq!(
            server.info_stat("sync_partial_ok").unwrap(),
            partial_before + 1,
            "{version}: a partial resync"
        );
        ingest.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_overflow_while_away_means_a_new_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(RedisVersion::V7_0, &[("repl-backlog-size", "16kb")]);
    seed(&server);
    let source = endpoint(&server.addr(), InstanceMode::Standalone);
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let mut sub = Subscription::open(
        &mut client,
        request("overflow", source.clone(), vec![], None),
    )
    .await;
    sub.until("snapshot end", WAIT, |s| s.count(is_end) == 1)
        .await;
    cmd(&server, &["SET", "before", "1"]);
    caught_up(&mut sub, &server, "standalone").await;
    let acked = sub.ends["standalone"].clone();
    acknowledge(&mut client, "overflow", "standalone", acked.clone()).await;
    drop(sub);
    ingest.stop().await;

    let value = "x".repeat(1024);
    for i in 0..40 {
        cmd(&server, &["SET", &format!("big{i}"), &value]);
    }
    let full_before = server.info_stat("sync_full").unwrap();
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let start = vec![redis_sync_proto::v1::ShardPosition {
        shard_id: "standalone".into(),
        position: Some(acked),
    }];
    let mut sub = Subscription::open(&mut client, request("overflow", source, start, None)).await;
    sub.until("a new snapshot", WAIT, |s| s.count(is_end) == 1)
        .await;
    let Some(Kind::SnapshotBegin(begin)) = &sub.events[0].event.kind else {
        panic!("{:#?}", sub.summary())
    };
    assert!(begin.reason.contains("backlog"), "{}", begin.reason);
    assert_eq!(snapshot_keys(&sub), server_keys(&server));
    assert_eq!(server.info_stat("sync_full").unwrap(), full_before + 1);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_does_not_make_the_source_drop_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    for (version, class) in [
        (RedisVersion::V3_2, "slave"),
        (RedisVersion::V7_0, "replica"),
    ] {
        let limit = format!("{class} 256kb 128kb 1");
        let server = server(version, &[("client-output-buffer-limit", &limit)]);
        let id = format!("slow-{}", version.label().replace('.', "-"));
        let mut sub = Subscription::open(
            &mut client,
            request(
                &id,
                endpoint(&server.addr(), InstanceMode::Standalone),
                vec![],
                None,
            ),
        )
        .await;
        sub.until("snapshot end", WAIT, |s| s.count(is_end) == 1)
            .await;
        let from = sub.events.len();

        // The subscriber reads nothing while about twice the replica buffer limit is written.
        let value = "v".repeat(1024);
        let mut c = server.client().unwrap();
        for i in 0..600 {
            c.cmd_str(&["SET", &format!("k{i}"), &value]).unwrap();
        }
        let target = master_offset(&server);
        // The link drained everything into the spool: the source saw it acknowledged.
        eventually("the replica to acknowledge everything", WAIT, || async {
            let info = server.info("replication").map_err(|e| e.to_string())?;
            let slave = info.get("slave0").unwrap_or_default().to_owned();
            let acked = slave
                .split(',')
                .find_map(|kv| kv.strip_prefix("offset="))
                .and_then(|v| v.parse::<u64>().ok());
            if acked == Some(target) {
                Ok(())
            } else {
                Err(format!("slave0 = {slave:?}, want offset {target}"))
            }
        })
        .await;
        sub.until("every write", WAIT, |s| s.events.len() - from == 600)
            .await;
        assert_eq!(
            server.info_stat("sync_full").unwrap(),
            1,
            "{version}: no resync"
        );
        assert_eq!(
            server
                .info_field("replication", "connected_slaves")
                .unwrap(),
            "1",
            "{version}"
        );
        assert_eq!(
            server
                .info_stat("client_output_buffer_limit_disconnections")
                .unwrap_or(0),
            0,
            "{version}"
        );
    }
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_come_back_as_heartbeat_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(RedisVersion::V7_0, &[]);
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let mut sub = Subscription::open(
        &mut client,
        request(
            "hb",
            endpoint(&server.addr(), InstanceMode::Standalone),
            vec![],
            Some(100),
        ),
    )
    .await;
    sub.until("two heartbeats", WAIT, |s| {
        s.count(|k| matches!(k, Kind::Heartbeat(_))) >= 2
    })
    .await;
    let hb = sub
        .events
        .iter()
        .find_map(|g| match &g.event.kind {
            Some(Kind::Heartbeat(h)) => Some(h.clone()),
            _ => None,
        })
        .unwrap();
    assert!(hb.source_ms > 1_600_000_000_000);
    let command = hb.command.unwrap();
    assert_eq!(command.args[0], b"DTS_REDIS_TIMESTAMP_HEARTBEAT:hb");
    // Another task's heartbeat key is ordinary data.
    cmd(
        &server,
        &[
            "SET",
            "DTS_REDIS_TIMESTAMP_HEARTBEAT:other",
            "1",
            "PX",
            "60000",
        ],
    );
    sub.until("the other heartbeat", WAIT, |s| {
        s.count(|k| matches!(k, Kind::Command(c) if c.args[0].ends_with(b":other"))) == 1
    })
    .await;
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_fails_the_subscription_naming_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(RedisVersion::V7_0, &[]);
    let ingest = RunningIngest::start_with(config(dir.path(), 64 * 1024)).await;
    let mut client = ingest.client().await;
    let mut sub = Subscription::open(
        &mut client,
        request(
            "full",
            endpoint(&server.addr(), InstanceMode::Standalone),
            vec![],
            None,
        ),
    )
    .await;
    sub.until("snapshot end", WAIT, |s| s.count(is_end) == 1)
        .await;
    let value = "v".repeat(1024);
    for i in 0..100 {
        cmd(&server, &["SET", &format!("k{i}"), &value]);
    }
    sub.until("the error", WAIT, |s| s.error.is_some()).await;
    let status = sub.error.unwrap();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("spool_max_bytes = 65536"),
        "{}",
        status.message()
    );
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_shards_stream_concurrently_each_key_from_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    for version in [RedisVersion::V3_2, RedisVersion::V7_0] {
        let cluster = redis_sync_testkit::RedisCluster::start(version, 3, 0).unwrap();
        let masters = cluster.masters();
        for i in 0..12 {
            let key = format!("seed{i}");
            cmd(cluster.node_for_key(key.as_bytes()), &["SET", &key, "v"]);
        }
        let id = format!("cluster-{}", version.label().replace('.', "-"));
        let source = endpoint(&masters[0].addr(), InstanceMode::Cluster);
        // Heartbeats on: each master gets its own key, hash-tagged into its own slots.
        let mut sub =
            Subscription::open(&mut client, request(&id, source.clone(), vec![], Some(100))).await;
        sub.until("three snapshots", WAIT, |s| s.count(is_end) == 3)
            .await;
        for g in &sub.events {
            if let Some(Kind::Key(k)) = &g.event.kind {
                assert_eq!(
                    g.shard,
                    cluster.node_for_key(&k.key).id(),
                    "{version}: snapshot key {:?}",
                    String::from_utf8_lossy(&k.key)
                );
            }
        }
        // The snapshot may also hold our own heartbeat keys, written as the subscription began.
        let seeded = snapshot_keys(&sub)
            .into_iter()
            .filter(|(_, k)| k.starts_with(b"seed"))
            .count();
        assert_eq!(seeded, 12, "{version}");

        let keys: Vec<String> = (0..30).map(|i| format!("key{i}")).collect();
        for key in &keys {
            cmd(cluster.node_for_key(key.as_bytes()), &["SET", key, "v"]);
        }
        let is_key_write = |k: &Kind| matches!(k, Kind::Command(c) if c.args.first().is_some_and(|a| a.starts_with(b"key")));
        sub.until("every write", WAIT, |s| s.count(is_key_write) == keys.len())
            .await;
        for g in &sub.events {
            if let Some(Kind::Command(c)) = &g.event.kind
                && c.args[0].starts_with(b"key")
            {
                assert_eq!(
                    g.shard,
                    cluster.node_for_key(&c.args[0]).id(),
                    "{version}: {}",
                    command_text(c)
                );
            }
        }
        sub.until("a heartbeat from every master", WAIT, |s| {
            masters.iter().all(|m| {
                s.events
                    .iter()
                    .any(|g| g.shard == m.id() && matches!(g.event.kind, Some(Kind::Heartbeat(_))))
            })
        })
        .await;

        let probe = client
            .probe_source(redis_sync_proto::v1::ProbeSourceRequest {
                source: Some(source),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(probe.mode, InstanceMode::Cluster as i32, "{version}");
        assert!(probe.all_slots_covered, "{version}");
        let mut ids: Vec<_> = probe.masters.iter().map(|m| m.shard_id.clone()).collect();
        ids.sort();
        let mut want: Vec<_> = masters.iter().map(|m| m.id().to_owned()).collect();
        want.sort();
        assert_eq!(ids, want, "{version}");
        assert!(
            probe
                .masters
                .iter()
                .all(|m| m.psync_allowed && m.slots.len() == 1),
            "{version}: {probe:?}"
        );
        drop(sub);
    }
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_the_source_and_classifies_failures() {
    use redis_sync_proto::v1::{ProbeErrorKind, ProbeSourceRequest, RedisEndpoint};
    let dir = tempfile::tempdir().unwrap();
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let mut probe = async |source: RedisEndpoint| {
        client
            .probe_source(ProbeSourceRequest {
                source: Some(source),
            })
            .await
            .unwrap()
            .into_inner()
    };

    let server = RedisServer::builder(RedisVersion::V7_0)
        .password("s3cret")
        .start()
        .unwrap();
    seed(&server);
    let mut source = endpoint(&server.addr(), InstanceMode::Standalone);
    source.password = "s3cret".into();
    let r = probe(source.clone()).await;
    assert!(r.error.is_none(), "{r:?}");
    assert_eq!(r.mode, InstanceMode::Standalone as i32);
    assert!(RedisVersion::V7_0.matches(&r.version), "{}", r.version);
    let m = &r.masters[0];
    assert_eq!(
        (m.shard_id.as_str(), m.role.as_str(), m.address.as_str()),
        ("standalone", "master", server.addr().as_str())
    );
    assert!(m.psync_allowed && m.psync_error.is_empty(), "{m:?}");
    assert_eq!(m.keys_per_db.get(&0), Some(&6));
    assert_eq!(m.keys_per_db.get(&2), Some(&1));
    assert_eq!(m.repl_timeout_seconds, 60);
    assert!(m.repl_backlog_size >= 1024 * 1024, "{m:?}");
    assert!(m.used_memory > 0);
    assert!(m.modules.is_empty());

    source.password = "wrong".into();
    let r = probe(source.clone()).await;
    let e = r.error.expect("an error");
    assert_eq!(e.kind, ProbeErrorKind::Authentication as i32, "{e:?}");
    assert!(!e.message.is_empty());

    source.password.clear();
    let r = probe(source).await;
    let e = r.error.expect("an error");
    assert_eq!(
        e.kind,
        ProbeErrorKind::Authentication as i32,
        "no password: {e:?}"
    );

    // Port 1 on loopback: nobody listens there.
    let r = probe(endpoint("127.0.0.1:1", InstanceMode::Standalone)).await;
    assert_eq!(
        r.error.expect("an error").kind,
        ProbeErrorKind::Unreachable as i32
    );

    // Redis 2.8 refuses `REPLCONF capa` but serves PSYNC all the same.
    let old = RedisServer::start(RedisVersion::V2_8).unwrap();
    let r = probe(endpoint(&old.addr(), InstanceMode::Standalone)).await;
    let m = &r.masters[0];
    assert!(r.error.is_none() && m.psync_allowed, "{r:?}");
    assert!(RedisVersion::V2_8.matches(&r.version), "{}", r.version);
    assert!(m.modules.is_empty());
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_inside_a_snapshot_resumes_it_from_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(RedisVersion::V7_0, &[]);
    let mut c = server.client().unwrap();
    for i in 0..100 {
        c.cmd_str(&["SET", &format!("k{i}"), "v"]).unwrap();
    }
    let source = endpoint(&server.addr(), InstanceMode::Standalone);
    let mut cfg = config(dir.path(), 1 << 30);
    cfg.max_batch_events = 10;

    let ingest = RunningIngest::start_with(cfg.clone()).await;
    let mut client = ingest.client().await;
    let mut sub = Subscription::open(
        &mut client,
        request("midsnap", source.clone(), vec![], None),
    )
    .await;
    sub.until("some keys", WAIT, |s| {
        s.count(|k| matches!(k, Kind::Key(_))) >= 25
    })
    .await;
    let at = sub
        .events
        .iter()
        .rposition(|g| matches!(g.event.kind, Some(Kind::Key(_))))
        .unwrap();
    let position = sub.events[at].event.position.clone().unwrap();
    assert!(position.in_snapshot);
    assert_eq!(
        position.snapshot_records as usize, at,
        "records counted so far (SnapshotBegin is event 0)"
    );
    let delivered: Vec<Vec<u8>> = sub.events[..=at]
        .iter()
        .filter_map(|g| match &g.event.kind {
            Some(Kind::Key(k)) => Some(k.key.clone()),
            _ => None,
        })
        .collect();
    drop(sub);
    ingest.stop().await;

    let ingest = RunningIngest::start_with(cfg).await;
    let mut client = ingest.client().await;
    let start = vec![redis_sync_proto::v1::ShardPosition {
        shard_id: "standalone".into(),
        position: Some(position),
    }];
    let mut sub = Subscription::open(&mut client, request("midsnap", source, start, None)).await;
    sub.until("the rest of the snapshot", WAIT, |s| s.count(is_end) == 1)
        .await;
    // No new copy: one SnapshotBegin marked `resumed`, at the resume point, counting the
    // keys delivered before.
    let begins: Vec<_> = sub
        .events
        .iter()
        .filter_map(|g| match &g.event.kind {
            Some(Kind::SnapshotBegin(b)) => Some((b.clone(), g.event.position.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(begins.len(), 1, "{:?}", sub.summary());
    let (begin, at) = &begins[0];
    assert!(begin.resumed, "{begin:?}");
    assert_eq!(begin.resumed_keys as usize, delivered.len());
    assert_eq!(begin.estimated_keys, 100);
    assert_eq!(
        at.as_ref().map(|p| p.snapshot_records),
        Some(delivered.len() as u64)
    );
    let mut all: Vec<Vec<u8>> = snapshot_keys(&sub).into_iter().map(|(_, k)| k).collect();
    assert!(
        all.iter().all(|k| !delivered.contains(k)),
        "nothing repeated"
    );
    all.extend(delivered);
    all.sort();
    let mut want: Vec<Vec<u8>> = (0..100).map(|i| format!("k{i}").into_bytes()).collect();
    want.sort();
    assert_eq!(all, want, "nothing missing");
    assert_eq!(server.info_stat("sync_full").unwrap(), 1);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_outlive_subscriptions_and_a_new_subscribe_replaces_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(RedisVersion::V6_2, &[]);
    let source = endpoint(&server.addr(), InstanceMode::Standalone);
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let mut first =
        Subscription::open(&mut client, request("twice", source.clone(), vec![], None)).await;
    first
        .until("snapshot end", WAIT, |s| s.count(is_end) == 1)
        .await;
    let acked = first.ends["standalone"].clone();

    // A second Subscribe of the same subscriber takes over; the first stream is told so.
    let mut second = Subscription::open(
        &mut client,
        request(
            "twice",
            source.clone(),
            vec![redis_sync_proto::v1::ShardPosition {
                shard_id: "standalone".into(),
                position: Some(acked.clone()),
            }],
            None,
        ),
    )
    .await;
    first
        .until("the first stream to be aborted", WAIT, |s| {
            s.error.is_some()
        })
        .await;
    assert_eq!(first.error.as_ref().unwrap().code(), tonic::Code::Aborted);
    cmd(&server, &["SET", "x", "1"]);
    caught_up(&mut second, &server, "standalone").await;
    assert_eq!(second.count(is_begin), 0);
    drop(second);

    // Nobody subscribed: the link still drains the source.
    cmd(&server, &["SET", "y", "2"]);
    let target = master_offset(&server);
    eventually("the link to keep acknowledging", WAIT, || async {
        let slave = server
            .info_field("replication", "slave0")
            .map_err(|e| e.to_string())?;
        if slave.contains(&format!("offset={target},")) {
            Ok(())
        } else {
            Err(slave)
        }
    })
    .await;
    let mut third = Subscription::open(
        &mut client,
        request(
            "twice",
            source,
            vec![redis_sync_proto::v1::ShardPosition {
                shard_id: "standalone".into(),
                position: Some(acked),
            }],
            None,
        ),
    )
    .await;
    caught_up(&mut third, &server, "standalone").await;
    let cmds: Vec<String> = third.events.iter().map(|g| describe(&g.event)).collect();
    assert_eq!(third.events.len(), 2, "{cmds:?}");
    assert_eq!(
        (
            server.info_stat("sync_full").unwrap(),
            server.info_stat("sync_partial_ok").unwrap()
        ),
        (1, 0)
    );
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_link_reconnects_with_a_partial_resync() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(RedisVersion::V5_0, &[]);
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let mut sub = Subscription::open(
        &mut client,
        request(
            "kill",
            endpoint(&server.addr(), InstanceMode::Standalone),
            vec![],
            None,
        ),
    )
    .await;
    sub.until("snapshot end", WAIT, |s| s.count(is_end) == 1)
        .await;
    cmd(&server, &["SET", "before", "1"]);
    caught_up(&mut sub, &server, "standalone").await;
    cmd(&server, &["CLIENT", "KILL", "TYPE", "slave"]);
    cmd(&server, &["SET", "after", "1"]);
    eventually("a partial resync", WAIT, || async {
        match server.info_stat("sync_partial_ok") {
            Ok(1) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    caught_up(&mut sub, &server, "standalone").await;
    let after_snapshot: Vec<String> = sub.events[sub.last_index(is_end).unwrap() + 1..]
        .iter()
        .map(|g| describe(&g.event))
        .collect();
    assert_eq!(after_snapshot.len(), 2, "{after_snapshot:?}");
    assert_eq!(server.info_stat("sync_full").unwrap(), 1);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_spool_continues_from_the_source_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(RedisVersion::V7_0, &[]);
    let source = endpoint(&server.addr(), InstanceMode::Standalone);
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let mut sub =
        Subscription::open(&mut client, request("lost", source.clone(), vec![], None)).await;
    sub.until("snapshot end", WAIT, |s| s.count(is_end) == 1)
        .await;
    let mut c = server.client().unwrap();
    c.cmd_str(&["SELECT", "5"]).unwrap();
    c.cmd_str(&["SET", "a", "1"]).unwrap();
    caught_up(&mut sub, &server, "standalone").await;
    let acked = sub.ends["standalone"].clone();
    assert_eq!(acked.db, 5);
    drop(sub);
    ingest.stop().await;
    std::fs::remove_dir_all(dir.path().join("lost")).unwrap();

    // Same connection: the stream will not repeat SELECT, so the db comes from the position.
    c.cmd_str(&["SET", "b", "2"]).unwrap();
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let start = vec![redis_sync_proto::v1::ShardPosition {
        shard_id: "standalone".into(),
        position: Some(acked),
    }];
    let mut sub = Subscription::open(&mut client, request("lost", source, start, None)).await;
    caught_up(&mut sub, &server, "standalone").await;
    let got: Vec<String> = sub.events.iter().map(|g| describe(&g.event)).collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("Command(db5 set b 2)"), "{got:?}");
    assert_eq!(server.info_stat("sync_partial_ok").unwrap(), 1);
    assert_eq!(server.info_stat("sync_full").unwrap(), 1);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_the_link_continues_under_the_new_replid() {
    let dir = tempfile::tempdir().unwrap();
    let master = server(RedisVersion::V7_0, &[]);
    let replica = server(RedisVersion::V7_0, &[]);
    replica.replicate_from(&master, WAIT).unwrap();
    seed(&master);
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let mut sub = Subscription::open(
        &mut client,
        request(
            "failover",
            endpoint(&master.addr(), InstanceMode::Standalone),
            vec![],
            None,
        ),
    )
    .await;
    sub.until("snapshot end", WAIT, |s| s.count(is_end) == 1)
        .await;
    cmd(&master, &["SET", "a", "1"]);
    let offset = caught_up(&mut sub, &master, "standalone").await;
    let acked = sub.ends["standalone"].clone();
    drop(sub);
    eventually("the replica to catch up", WAIT, || async {
        let o = master_offset(&replica);
        if o == offset {
            Ok(())
        } else {
            Err(format!("replica at {o}, master at {offset}"))
        }
    })
    .await;
    master.stop().unwrap();
    cmd(&replica, &["SLAVEOF", "NO", "ONE"]);
    let new_replid = replica.info_field("replication", "master_replid").unwrap();
    assert_ne!(new_replid, acked.replid);

    // The subscriber follows the promoted replica: same history, so no full copy.
    let start = vec![redis_sync_proto::v1::ShardPosition {
        shard_id: "standalone".into(),
        position: Some(acked),
    }];
    let mut sub = Subscription::open(
        &mut client,
        request(
            "failover",
            endpoint(&replica.addr(), InstanceMode::Standalone),
            start,
            None,
        ),
    )
    .await;
    cmd(&replica, &["SET", "b", "2"]);
    let end = caught_up(&mut sub, &replica, "standalone").await;
    let got: Vec<String> = sub.events.iter().map(|g| describe(&g.event)).collect();
    assert_eq!(got.len(), 1, "{got:?}");
    let position = sub.events[0].event.position.clone().unwrap();
    assert_eq!(
        (position.replid.as_str(), position.offset),
        (new_replid.as_str(), end)
    );
    assert_eq!(replica.info_stat("sync_partial_ok").unwrap(), 1);
    assert_eq!(replica.info_stat("sync_full").unwrap(), 0);
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_keys_come_in_chunks_and_functions_as_libraries() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(RedisVersion::V7_0, &[]);
    let items: Vec<String> = (0..2000).map(|i| format!("item-{i:05}")).collect();
    let mut args = vec!["RPUSH", "biglist"];
    args.extend(items.iter().map(String::as_str));
    cmd(&server, &args);
    cmd(&server, &["SET", "small", "v"]);
    cmd(
        &server,
        &[
            "FUNCTION",
            "LOAD",
            "#!lua name=mylib\nredis.register_function('f', function() return 1 end)",
        ],
    );
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let mut req = request(
        "chunks",
        endpoint(&server.addr(), InstanceMode::Standalone),
        vec![],
        None,
    );
    req.chunk_threshold_bytes = 1024;
    let mut sub = Subscription::open(&mut client, req).await;
    sub.until("snapshot end", WAIT, |s| s.count(is_end) == 1)
        .await;

    let mut list = Vec::new();
    let mut indexes = Vec::new();
    for g in &sub.events {
        match &g.event.kind {
            Some(Kind::Key(k)) if k.key == b"biglist" => {
                let Some(redis_sync_proto::v1::key_record::Value::Chunk(c)) = &k.value else {
                    panic!("{k:?}")
                };
                let Some(redis_sync_proto::v1::value_chunk::Items::ListItems(l)) = &c.items else {
                    panic!()
                };
                list.extend(
                    l.items
                        .iter()
                        .map(|i| String::from_utf8(i.clone()).unwrap()),
                );
                indexes.push((k.chunk_index, k.last_chunk));
            }
            Some(Kind::Key(k)) => {
                assert!(
                    matches!(
                        k.value,
                        Some(redis_sync_proto::v1::key_record::Value::DumpBody(_))
                    ) && k.last_chunk
                )
            }
            _ => {}
        }
    }
    assert_eq!(list, items);
    assert!(indexes.len() > 1, "{indexes:?}");
    assert!(
        indexes
            .iter()
            .enumerate()
            .all(|(i, &(idx, last))| idx as usize == i && last == (i + 1 == indexes.len())),
        "{indexes:?}"
    );
    let Some(Kind::SnapshotEnd(end)) = &sub.events[sub.last_index(is_end).unwrap()].event.kind
    else {
        panic!()
    };
    assert_eq!(end.keys, 2, "a chunked key counts once");
    let code = sub.events.iter().find_map(|g| match &g.event.kind {
        Some(Kind::Function(f)) => Some(String::from_utf8_lossy(&f.code).into_owned()),
        _ => None,
    });
    assert!(
        code.as_deref()
            .is_some_and(|c| c.starts_with("#!lua name=mylib")),
        "{code:?}"
    );
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_travel_with_the_snapshot_and_evalsha() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let body = "return redis.call('set', KEYS[1], ARGV[1])";

    // Before 7.0 the snapshot carries the script cache as `lua` AUX fields.
    let server62 = server(RedisVersion::V6_2, &[]);
    let sha = server62
        .cmd_str(&["SCRIPT", "LOAD", body])
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let mut sub = Subscription::open(
        &mut client,
        request(
            "scripts-6-2",
            endpoint(&server62.addr(), InstanceMode::Standalone),
            vec![],
            None,
        ),
    )
    .await;
    sub.until("snapshot end", WAIT, |s| s.count(is_end) == 1)
        .await;
    let Some(Kind::SnapshotEnd(end)) = &sub.events.last().unwrap().event.kind else {
        panic!()
    };
    assert_eq!(end.scripts.len(), 1, "{end:?}");
    assert_eq!(
        (end.scripts[0].sha1.as_str(), end.scripts[0].body.as_slice()),
        (sha.as_str(), body.as_bytes())
    );

    // 3.2 replicates scripts verbatim: EVALSHA must carry the body.
    let server32 = server(RedisVersion::V3_2, &[]);
    let mut sub = Subscription::open(
        &mut client,
        request(
            "scripts-3-2",
            endpoint(&server32.addr(), InstanceMode::Standalone),
            vec![],
            None,
        ),
    )
    .await;
    sub.until("snapshot end", WAIT, |s| s.count(is_end) == 1)
        .await;
    cmd(&server32, &["EVAL", body, "1", "k1", "v1"]);
    // 3.2 rewrites a script's first EVALSHA to EVAL (then remembers the replica has it).
    cmd(&server32, &["EVALSHA", &sha, "1", "k2", "v2"]);
    cmd(&server32, &["EVALSHA", &sha, "1", "k3", "v3"]);
    caught_up(&mut sub, &server32, "standalone").await;
    let scripted: Vec<_> = sub
        .events
        .iter()
        .filter_map(|g| match &g.event.kind {
            Some(Kind::Command(c)) => Some((
                String::from_utf8_lossy(&c.name).to_lowercase(),
                c.script_body.clone(),
                c.key_indexes.clone(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(scripted.len(), 3, "{:?}", sub.summary());
    assert_eq!(scripted[0].0, "eval");
    assert_eq!(scripted[0].2, vec![2], "EVAL's key follows numkeys");
    assert_eq!(scripted[2].0, "evalsha", "{:?}", sub.summary());
    assert_eq!(scripted[2].1, body.as_bytes());
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_bodies_outlive_an_ingest_restart() {
    let dir = tempfile::tempdir().unwrap();
    let body = "return redis.call('set', KEYS[1], ARGV[1])";
    let server = server(RedisVersion::V3_2, &[]);
    let source = endpoint(&server.addr(), InstanceMode::Standalone);
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let mut sub = Subscription::open(
        &mut client,
        request("scripts-restart", source.clone(), vec![], None),
    )
    .await;
    sub.until("snapshot end", WAIT, |s| s.count(is_end) == 1)
        .await;
    let sha = cmd(&server, &["SCRIPT", "LOAD", body])
        .as_str()
        .unwrap()
        .to_owned();
    // The first ones carry the body (SCRIPT LOAD, or EVALSHA rewritten to EVAL); from
    // then on the master sends EVALSHA alone.
    cmd(&server, &["EVALSHA", &sha, "1", "k1", "v1"]);
    cmd(&server, &["EVALSHA", &sha, "1", "k2", "v2"]);
    caught_up(&mut sub, &server, "standalone").await;
    let verbatim = |s: &Subscription| {
        s.events.iter().position(|g| {
            matches!(&g.event.kind, Some(Kind::Command(c)) if c.name.eq_ignore_ascii_case(b"evalsha"))
        })
    };
    let first_evalsha = verbatim(&sub).expect("an EVALSHA sent as such");
    let before = sub.events[first_evalsha - 1]
        .event
        .position
        .clone()
        .unwrap();
    acknowledge(&mut client, "scripts-restart", "standalone", before.clone()).await;
    drop(sub);
    ingest.stop().await;

    // A new ingest starts reading after everything that carried the body.
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let start = vec![redis_sync_proto::v1::ShardPosition {
        shard_id: "standalone".into(),
        position: Some(before),
    }];
    let mut sub =
        Subscription::open(&mut client, request("scripts-restart", source, start, None)).await;
    caught_up(&mut sub, &server, "standalone").await;
    let i = verbatim(&sub).expect("the EVALSHA again");
    let Some(Kind::Command(c)) = &sub.events[i].event.kind else {
        panic!()
    };
    assert_eq!(c.script_body, body.as_bytes(), "{:?}", sub.summary());
    assert!(
        !sub.events[..i].iter().any(|g| matches!(&g.event.kind, Some(Kind::Command(c)) if c.name.eq_ignore_ascii_case(b"eval") || c.name.eq_ignore_ascii_case(b"script"))),
        "the body did not come from the stream again: {:?}",
        sub.summary()
    );
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getack_is_answered_at_once_and_wrong_credentials_fail_the_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::builder(RedisVersion::V7_0)
        .password("pw")
        .config("repl-ping-slave-period", "3600")
        .start()
        .unwrap();
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let mut source = endpoint(&server.addr(), InstanceMode::Standalone);
    source.password = "pw".into();
    let mut sub =
        Subscription::open(&mut client, request("getack", source.clone(), vec![], None)).await;
    sub.until("snapshot end", WAIT, |s| s.count(is_end) == 1)
        .await;
    cmd(&server, &["SET", "a", "1"]);
    caught_up(&mut sub, &server, "standalone").await;
    // WAIT makes the master send REPLCONF GETACK; periodic ACKs come once a second, so
    // five 400 ms waits in a row all succeed by chance about once in a hundred runs; they
    // succeed every time only if GETACK is answered right away.
    for i in 0..5 {
        cmd(&server, &["SET", "w", &i.to_string()]);
        let acked = server.cmd_str(&["WAIT", "1", "400"]).unwrap();
        assert_eq!(acked.as_int(), Some(1), "WAIT {i}");
    }

    source.password = "wrong".into();
    let mut sub = Subscription::open(&mut client, request("badpw", source, vec![], None)).await;
    sub.until("the error", WAIT, |s| s.error.is_some()).await;
    let status = sub.error.unwrap();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_source_is_copied_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(RedisVersion::V6_0, &[]);
    seed(&server);
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let mut sub = Subscription::open(
        &mut client,
        request(
            "srcrestart",
            endpoint(&server.addr(), InstanceMode::Standalone),
            vec![],
            None,
        ),
    )
    .await;
    sub.until("snapshot end", WAIT, |s| s.count(is_end) == 1)
        .await;
    // The link retries with backoff while the source is down, then finds a new history.
    server.kill9().unwrap();
    server.restart().unwrap();
    cmd(&server, &["SET", "fresh", "1"]);
    sub.until("a second snapshot", WAIT, |s| s.count(is_end) == 2)
        .await;
    let begin = sub.last_index(is_begin).unwrap();
    let Some(Kind::SnapshotBegin(b)) = &sub.events[begin].event.kind else {
        panic!()
    };
    assert!(b.reason.contains("could not continue"), "{}", b.reason);
    // The restarted server loaded the dump.rdb its disk sync left behind, plus "fresh".
    let keys: std::collections::BTreeSet<_> = sub.events[begin..]
        .iter()
        .filter_map(|g| match &g.event.kind {
            Some(Kind::Key(k)) => Some((k.db, k.key.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(keys, server_keys(&server), "{:?}", sub.summary());
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_fit_a_default_grpc_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(RedisVersion::V7_0, &[]);
    // Incompressible values just under the chunk threshold: 5 × 900 KiB in one snapshot.
    let mut c = server.client().unwrap();
    for i in 0..5u32 {
        // xorshift64: the RDB's LZF compression must not shrink these.
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(i);
        let value: Vec<u8> = (0..900 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        c.command(&[b"SET", format!("big{i}").as_bytes(), &value])
            .unwrap();
    }
    let ingest = RunningIngest::start(dir.path()).await;
    let source = endpoint(&server.addr(), InstanceMode::Standalone);
    // First spool the whole snapshot, so the second subscription reads it in one go.
    let mut big_client = ingest.client().await;
    let mut first = Subscription::open(
        &mut big_client,
        request("bigbatch", source.clone(), vec![], None),
    )
    .await;
    first
        .until("snapshot end", WAIT, |s| s.count(is_end) == 1)
        .await;
    drop(first);
    // No raised message limit: 4 MiB, tonic's default.
    let mut client = redis_sync_proto::v1::ingest_service_client::IngestServiceClient::connect(
        format!("http://{}", ingest.addr),
    )
    .await
    .unwrap();
    let mut sub = Subscription::open(&mut client, request("bigbatch", source, vec![], None)).await;
    sub.until("snapshot end", WAIT, |s| s.count(is_end) == 1)
        .await;
    assert_eq!(snapshot_keys(&sub).len(), 5);
    assert_eq!(
        server.info_stat("sync_full").unwrap(),
        1,
        "served from the spool"
    );
    ingest.stop().await;
}
