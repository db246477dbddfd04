//! How ingest reaches its source: TLS, a source that cannot be reached, and a cluster that
//! fails over or reshards under a running subscription. Real Redis 7.0 servers throughout.

mod support;

use std::{path::PathBuf, time::Duration};

use redis_sync_proto::v1::{
    InstanceMode, ProbeErrorKind, ProbeSourceRequest, RedisEndpoint, RedisTls, ShardPosition,
    change_event::Kind,
};
use redis_sync_testkit::{RedisCluster, RedisServer, RedisVersion};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn is_command_on(key: &'static [u8]) -> impl Fn(&Kind) -> bool {
    move |k| matches!(k, Kind::Command(c) if c.args.first().is_some_and(|a| a == key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_source_is_reported_and_the_link_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::builder(RedisVersion::V7_0)
        .config("repl-ping-slave-period", "3600")
        .start()
        .unwrap();
    // The port refuses connections from now on.
    server.stop().unwrap();
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let source = endpoint(&server.addr(), InstanceMode::Standalone);
    let mut sub =
        Subscription::open(&mut client, request("down", source.clone(), vec![], None)).await;
    sub.until("the error", WAIT, |s| s.error.is_some()).await;
    let status = sub.error.clone().unwrap();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(&server.addr()) && status.message().contains("refused"),
        "names the address and the last error: {status:?}"
    );
    assert!(sub.events.is_empty());

    // The link goes on retrying in the background: once the source is back it is
    // attached again without anyone asking, and a new subscription (what apply does
    // after UNAVAILABLE) gets the copy.
    server.restart().unwrap();
    cmd(&server, &["SET", "k", "v"]);
    eventually("the link to reconnect by itself", WAIT, || async {
        match server.info_field("replication", "connected_slaves") {
            Ok(n) if n == "1" => Ok(()),
            other => Err(format!("connected_slaves {other:?}")),
        }
    })
    .await;
    let mut sub = Subscription::open(&mut client, request("down", source, vec![], None)).await;
    sub.until("snapshot end", WAIT, |s| s.count(is_end) == 1)
        .await;
    assert!(snapshot_keys(&sub).contains(&(0, b"k".to_vec())));
    ingest.stop().await;
}

/// Test certificates: a CA, a server certificate for 127.0.0.1 and a client certificate
/// signed by it, and an unrelated CA.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    other_ca: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let (ca_pem, issuer) = ca("redis-sync ingest test CA");
        let (other_pem, _) = ca("someone else's CA");
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![usage];
            params
                .distinguished_name
                .push(DnType::CommonName, "redis-sync test");
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key) = leaf(
            vec!["127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_pem, client_key) = leaf(vec![], ExtendedKeyUsagePurpose::ClientAuth);
        Pki {
            ca: write("ca.pem", ca_pem),
            server_cert: write("server.pem", server_pem),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_pem),
            client_key: write("client.key", client_key),
            other_ca: write("other-ca.pem", other_pem),
            _dir: dir,
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn path(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_links_probes_and_heartbeats_and_a_wrong_ca_fails_clearly() {
    let pki = Pki::new();
    let tls_port = free_port();
    // Clients must show a certificate too (mutual TLS).
    let server = RedisServer::builder(RedisVersion::V7_0)
        .config("repl-ping-slave-period", "3600")
        .config("tls-port", tls_port.to_string())
        .config("tls-cert-file", path(&pki.server_cert))
        .config("tls-key-file", path(&pki.server_key))
        .config("tls-ca-cert-file", path(&pki.ca))
        .config("tls-auth-clients", "yes")
        .start()
        .unwrap();
    cmd(&server, &["SET", "before", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let tls_addr = format!("127.0.0.1:{tls_port}");
    let mut source = endpoint(&tls_addr, InstanceMode::Standalone);
    source.tls = Some(RedisTls {
        enabled: true,
        ca_file: path(&pki.ca),
        cert_file: path(&pki.client_cert),
        key_file: path(&pki.client_key),
        ..Default::default()
    });
    let probe_client = client.clone();
    let probe = |source: RedisEndpoint| {
        let mut client = probe_client.clone();
        async move {
            client
                .probe_source(ProbeSourceRequest {
                    source: Some(source),
                })
                .await
        }
    };

    let r = probe(source.clone()).await.unwrap().into_inner();
    assert!(r.error.is_none(), "{r:?}");
    assert!(r.masters[0].psync_allowed, "{r:?}");
    assert!(RedisVersion::V7_0.matches(&r.version), "{r:?}");

    // Replica link and heartbeats over TLS.
    let mut sub = Subscription::open(
        &mut client,
        request("tls", source.clone(), vec![], Some(100)),
    )
    .await;
    sub.until("snapshot end", WAIT, |s| s.count(is_end) == 1)
        .await;
    assert!(snapshot_keys(&sub).contains(&(0, b"before".to_vec())));
    cmd(&server, &["SET", "after", "2"]);
    sub.until("the write and a heartbeat", WAIT, |s| {
        s.count(is_command_on(b"after")) == 1 && s.count(|k| matches!(k, Kind::Heartbeat(_))) > 0
    })
    .await;
    let clients = server.cmd_str(&["CLIENT", "LIST"]).unwrap();
    let clients = clients.as_str().unwrap_or_default().to_owned();
    let on_tls_port = |l: &&str| l.contains(&format!("laddr={tls_addr} "));
    let lines: Vec<&str> = clients.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("flags=S") && on_tls_port(l))
            && lines
                .iter()
                .any(|l| l.contains("cmd=set") && on_tls_port(l)),
        "the replica link and the heartbeat came in on the TLS port: {clients}"
    );
    drop(sub);

    // A CA that did not sign the server's certificate: refused at once, and saying why.
    let mut wrong = source.clone();
    if let Some(t) = wrong.tls.as_mut() {
        t.ca_file = path(&pki.other_ca);
    }
    let r = probe(wrong.clone()).await.unwrap().into_inner();
    let e = r.error.expect("an error");
    assert_eq!(e.kind, ProbeErrorKind::Unreachable as i32, "{e:?}");
    assert!(
        e.message.contains("certificate") && e.message.contains(&tls_addr),
        "{e:?}"
    );
    let mut sub =
        Subscription::open(&mut client, request("tls-wrong-ca", wrong, vec![], None)).await;
    sub.until("the error", WAIT, |s| s.error.is_some()).await;
    let status = sub.error.unwrap();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("certificate") && status.message().contains("ca_file"),
        "{status:?}"
    );

    // Settings that cannot work are refused before anything connects.
    let mut missing = source.clone();
    if let Some(t) = missing.tls.as_mut() {
        t.ca_file = "/nonexistent/ca.pem".into();
    }
    let status = client
        .subscribe(request("tls-missing", missing.clone(), vec![], None))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("/nonexistent/ca.pem"),
        "{status:?}"
    );
    let status = probe(missing).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_continues_the_shard_without_a_new_copy() {
    let cluster = RedisCluster::start(RedisVersion::V7_0, 3, 1).unwrap();
    let owner = cluster.node_for_key(b"counter");
    let shard = owner.id().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let source = endpoint(&cluster.masters()[0].addr(), InstanceMode::Cluster);
    let mut sub =
        Subscription::open(&mut client, request("failover", source, vec![], Some(100))).await;
    sub.until("three snapshots", WAIT, |s| s.count(is_end) == 3)
        .await;
    let incr = |k: &Kind| matches!(k, Kind::Command(c) if c.name.eq_ignore_ascii_case(b"incr"));
    for _ in 0..20 {
        cmd(owner, &["INCR", "counter"]);
    }
    sub.until("20 INCR", WAIT, |s| s.count(incr) == 20).await;

    let replica = cluster.replicas_of(owner)[0];
    cluster.failover(replica).unwrap();
    let after_failover = sub.events.len();
    for _ in 0..20 {
        cmd(replica, &["INCR", "counter"]);
    }
    sub.until("20 more INCR", WAIT, |s| s.count(incr) >= 40)
        .await;
    sub.until("a heartbeat from the new master", WAIT, |s| {
        s.events[after_failover..]
            .iter()
            .any(|g| g.shard == shard && matches!(g.event.kind, Some(Kind::Heartbeat(_))))
    })
    .await;
    // A little more time for a repeat to show up, if there were one.
    let end = replica
        .info_field("replication", "master_repl_offset")
        .unwrap();
    let end: u64 = end.parse().unwrap();
    sub.until("the shard's end position", WAIT, |s| {
        s.ends.get(&shard).is_some_and(|p| p.offset >= end)
    })
    .await;

    assert_eq!(
        sub.count(incr),
        40,
        "no INCR lost or repeated: {:#?}",
        sub.summary()
    );
    assert_eq!(
        sub.count(is_begin),
        3,
        "no new full copy: {:#?}",
        sub.summary()
    );
    assert!(
        sub.events
            .iter()
            .filter(|g| g.event.kind.as_ref().is_some_and(incr))
            .all(|g| g.shard == shard),
        "the shard keeps its id"
    );
    let new_replid = replica.info_field("replication", "master_replid").unwrap();
    assert_eq!(
        sub.ends[&shard].replid, new_replid,
        "positions follow the new master's history"
    );
    assert_eq!(
        replica.info_stat("sync_full").unwrap(),
        0,
        "the new master made no full copy"
    );
    assert_eq!(
        cmd(replica, &["GET", "counter"]).as_str(),
        Some("40"),
        "the source agrees"
    );

    // A new ingest (nothing in memory about the failover) given apply's positions finds
    // the shard's history at its new master through the replid, and goes on from there.
    let start: Vec<ShardPosition> = sub
        .ends
        .iter()
        .map(|(shard, p)| ShardPosition {
            shard_id: shard.clone(),
            position: Some(p.clone()),
        })
        .collect();
    drop(sub);
    ingest.stop().await;
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let source = endpoint(&cluster.masters()[0].addr(), InstanceMode::Cluster);
    let mut sub = Subscription::open(&mut client, request("failover", source, start, None)).await;
    cmd(replica, &["INCR", "counter"]);
    sub.until("the INCR after the restart", WAIT, |s| s.count(incr) == 1)
        .await;
    let got = sub
        .events
        .iter()
        .find(|g| g.event.kind.as_ref().is_some_and(incr))
        .unwrap();
    assert_eq!(got.shard, shard, "the same shard id: {:#?}", sub.summary());
    assert_eq!(sub.count(is_begin), 0, "no full copy: {:#?}", sub.summary());
    assert_eq!(replica.info_stat("sync_full").unwrap(), 0);
    ingest.stop().await;
}

/// What a destination would hold after applying `events` in the given order (snapshot
/// keys, SET, RESTORE-ASKING, DEL; nothing else is written in the resharding test).
fn apply(
    model: &mut std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    events: &[&redis_sync_proto::v1::ChangeEvent],
) {
    use redis_sync_proto::v1::Command;
    let run = |model: &mut std::collections::BTreeMap<Vec<u8>, Vec<u8>>, c: &Command| {
        let name = String::from_utf8_lossy(&c.name).to_lowercase();
        match name.as_str() {
            "set" => {
                model.insert(c.args[0].clone(), c.args[1].clone());
            }
            "restore-asking" | "restore" => {
                assert!(
                    c.args.iter().any(|a| a.eq_ignore_ascii_case(b"replace")),
                    "a migrated key replaces what the destination holds: {}",
                    command_text(c)
                );
                model.insert(c.args[0].clone(), b"(restored)".to_vec());
            }
            "del" => {
                for k in &c.args {
                    model.remove(k);
                }
            }
            _ => {}
        }
    };
    for e in events {
        match &e.kind {
            Some(Kind::Key(k)) => {
                model.insert(k.key.clone(), b"(snapshot)".to_vec());
            }
            Some(Kind::Command(c)) => run(model, c),
            Some(Kind::Transaction(t)) => t.commands.iter().for_each(|c| run(model, c)),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_moves_keys_without_losing_them_whatever_the_order_of_shards() {
    let cluster = RedisCluster::start(RedisVersion::V7_0, 3, 0).unwrap();
    let slot = RedisCluster::key_slot(b"{r}");
    let from = cluster.node_for_slot(slot);
    let to = cluster
        .masters()
        .into_iter()
        .find(|m| m.id() != from.id())
        .unwrap();
    let keys: Vec<String> = (0..10).map(|i| format!("{{r}}k{i}")).collect();
    for k in &keys[..5] {
        cmd(from, &["SET", k, "before"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let source = endpoint(&cluster.masters()[0].addr(), InstanceMode::Cluster);
    let mut sub = Subscription::open(&mut client, request("reshard", source, vec![], None)).await;
    sub.until("three snapshots", WAIT, |s| s.count(is_end) == 3)
        .await;
    for k in &keys[5..] {
        cmd(from, &["SET", k, "streamed"]);
    }
    // A client's DEL in a slot that stays put is delivered as ever.
    let control = cluster.node_for_key(b"{c}x");
    cmd(control, &["SET", "{c}x", "1"]);
    cmd(control, &["DEL", "{c}x"]);

    let slot_s = slot.to_string();
    cmd(to, &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", from.id()]);
    cmd(from, &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", to.id()]);
    let port = to.port().to_string();
    let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
    migrate.extend(keys.iter().map(String::as_str));
    cmd(from, &migrate);
    for node in cluster.masters() {
        cmd(node, &["CLUSTER", "SETSLOT", &slot_s, "NODE", to.id()]);
    }
    cmd(to, &["SET", "{r}after", "1"]);

    let restored = |s: &Subscription| {
        s.events
            .iter()
            .filter(|g| {
                g.shard == to.id()
                    && matches!(&g.event.kind, Some(Kind::Command(c)) if c.name.eq_ignore_ascii_case(b"restore-asking"))
            })
            .count()
    };
    sub.until("the keys restored on the new owner", WAIT, |s| {
        restored(s) == keys.len() && s.count(is_command_on(b"{r}after")) == 1
    })
    .await;
    let from_end = master_offset(from);
    sub.until("the old owner's stream past the MIGRATE", WAIT, |s| {
        s.ends.get(from.id()).is_some_and(|p| p.offset >= from_end)
    })
    .await;

    // Per shard in order, shards one after the other, the new owner first: its
    // RESTORE-ASKINGs come before the old owner's DEL would.
    let of = |shard: &str| -> Vec<&redis_sync_proto::v1::ChangeEvent> {
        sub.events
            .iter()
            .filter(|g| g.shard == shard)
            .map(|g| &g.event)
            .collect()
    };
    let mut model = std::collections::BTreeMap::new();
    apply(&mut model, &of(to.id()));
    apply(&mut model, &of(from.id()));
    for m in cluster.masters() {
        if m.id() != to.id() && m.id() != from.id() {
            apply(&mut model, &of(m.id()));
        }
    }
    for k in keys.iter().map(String::as_str).chain(["{r}after"]) {
        assert!(
            model.contains_key(k.as_bytes()),
            "{k} survives the move: {:#?}",
            sub.summary()
        );
        assert_eq!(
            cmd(to, &["EXISTS", k]).as_int(),
            Some(1),
            "the source has {k} on its new owner"
        );
    }
    assert!(
        !model.contains_key(b"{c}x".as_slice()),
        "{:#?}",
        sub.summary()
    );
    let dels: Vec<String> = sub
        .events
        .iter()
        .filter_map(|g| match &g.event.kind {
            Some(Kind::Command(c)) if c.name.eq_ignore_ascii_case(b"del") => Some(command_text(c)),
            _ => None,
        })
        .collect();
    assert_eq!(
        dels,
        vec!["del {c}x".to_owned()],
        "only the client's DEL travels"
    );
    ingest.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_added_by_scaling_out_is_reported_until_subscribed_again() {
    let cluster = RedisCluster::start(RedisVersion::V7_0, 3, 0).unwrap();
    let extra = RedisServer::builder(RedisVersion::V7_0)
        .config("cluster-enabled", "yes")
        .config("cluster-node-timeout", "2000")
        .start()
        .unwrap();
    let extra_id = cmd(&extra, &["CLUSTER", "MYID"])
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let ingest = RunningIngest::start(dir.path()).await;
    let mut client = ingest.client().await;
    let masters = cluster.masters();
    let source = endpoint(&masters[0].addr(), InstanceMode::Cluster);
    let mut sub = Subscription::open(
        &mut client,
        request("scale-out", source.clone(), vec![], None),
    )
    .await;
    sub.until("three snapshots", WAIT, |s| s.count(is_end) == 3)
        .await;

    // Scale out: a fourth master joins and is given one slot.
    cmd(
        &extra,
        &[
            "CLUSTER",
            "MEET",
            "127.0.0.1",
            &masters[0].port().to_string(),
        ],
    );
    eventually("every master to know the new node", WAIT, || async {
        for m in &masters {
            let text = m.cmd_str(&["CLUSTER", "NODES"]).unwrap();
            let text = text.as_str().unwrap_or_default().to_owned();
            if !text.contains(&extra_id) || text.contains("handshake") {
                return Err(text);
            }
        }
        Ok(())
    })
    .await;
    let slot = RedisCluster::key_slot(b"{n}");
    let from = cluster.node_for_slot(slot);
    let slot_s = slot.to_string();
    cmd(
        &extra,
        &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", from.id()],
    );
    cmd(
        from,
        &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &extra_id],
    );
    cmd(&extra, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &extra_id]);
    for m in &masters {
        cmd(m, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &extra_id]);
    }
    eventually("the new master to serve its slot", WAIT, || async {
        match extra.cmd_str(&["SET", "{n}k", "1"]) {
            Ok(r) if r.as_error().is_none() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    sub.until("the subscription to end", WAIT, |s| s.error.is_some())
        .await;
    let status = sub.error.clone().unwrap();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains(&extra_id),
        "names the new master: {status:?}"
    );

    // Subscribing again (what apply does) follows it as a fourth shard.
    let start: Vec<ShardPosition> = sub
        .ends
        .iter()
        .map(|(shard, p)| ShardPosition {
            shard_id: shard.clone(),
            position: Some(p.clone()),
        })
        .collect();
    let mut sub = Subscription::open(&mut client, request("scale-out", source, start, None)).await;
    sub.until("the new shard's snapshot", WAIT, |s| s.count(is_end) == 1)
        .await;
    assert!(
        sub.events
            .iter()
            .all(|g| g.shard == extra_id || !matches!(g.event.kind, Some(Kind::SnapshotBegin(_)))),
        "only the new shard is copied: {:#?}",
        sub.summary()
    );
    assert!(
        sub.events.iter().any(|g| g.shard == extra_id
            && matches!(&g.event.kind, Some(Kind::Key(k)) if k.key == b"{n}k")),
        "{:#?}",
        sub.summary()
    );
    ingest.stop().await;
}
