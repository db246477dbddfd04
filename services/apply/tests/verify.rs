//! Verification against real Redis 7.0 servers: the same dataset (every type, TTLs, two
//! databases) is written to a source and a destination with the harness client, one
//! damage is done to the destination, and `verify` must report exactly that damage.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis_sync_apply::verify::{Side, VerifyError, VerifyOptions, verify};
use redis_sync_proto::v1::{
    Difference, DifferenceKind, HeartbeatOptions, InstanceMode, RedisEndpoint, TaskSpec,
    VerifyTaskResponse,
};
use redis_sync_testkit::{Client, RedisCluster, RedisServer, RedisVersion, Reply};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const TASK: &str = "task-7";
const V: RedisVersion = RedisVersion::V7_0;
/// Keys `dataset` writes per database.
const DATASET_KEYS: u64 = 16;

fn args(a: &[&str]) -> Vec<Vec<u8>> {
    a.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// Commands that build one database's worth of data; keys start with `p`.
fn dataset(p: &str) -> Vec<Vec<Vec<u8>>> {
    let k = |name: &str| format!("{p}{name}");
    let mut cmds = vec![
        args(&["SET", &k("str"), "hello"]),
        args(&["SET", &k("int"), "12345"]),
        vec![
            b"SET".to_vec(),
            k("bin").into_bytes(),
            b"\x00\xff\r\nbinary".to_vec(),
        ],
        // Two GETRANGE chunks.
        vec![
            b"SET".to_vec(),
            k("big-str").into_bytes(),
            (0..100_000u32).map(|i| (i % 251) as u8).collect(),
        ],
        args(&["RPUSH", &k("list"), "a", "b", "c"]),
        args(&["SADD", &k("set"), "x", "y", "z"]),
        args(&["SADD", &k("intset"), "1", "2", "3"]),
        args(&["HSET", &k("hash"), "f1", "v1", "f2", "v2"]),
        args(&[
            "ZADD",
            &k("zset"),
            "1",
            "a",
            "2.5",
            "b",
            "inf",
            "c",
            "-inf",
            "d",
            "0.1",
            "e",
        ]),
        args(&["XADD", &k("stream"), "1-1", "f", "v"]),
        args(&["XADD", &k("stream"), "1-2", "f", "v2", "g", "w"]),
        args(&["XADD", &k("stream"), "2-0", "x", "y"]),
        args(&["XGROUP", "CREATE", &k("stream"), "g1", "1-1"]),
        args(&["XGROUP", "CREATE", &k("stream"), "g2", "$"]),
        args(&["SET", &k("ttl-str"), "v"]),
        args(&["PEXPIRE", &k("ttl-str"), "600000"]),
        args(&["HSET", &k("ttl-hash"), "f", "v"]),
        args(&["PEXPIRE", &k("ttl-hash"), "600000"]),
    ];
    // Bigger than one page (500) of LRANGE / ZRANGE / SSCAN / HSCAN.
    let mut long_list = args(&["RPUSH", &k("long-list")]);
    let mut big_set = args(&["SADD", &k("big-set")]);
    let mut big_hash = args(&["HSET", &k("big-hash")]);
    let mut big_zset = args(&["ZADD", &k("big-zset")]);
    for i in 0..1200 {
        long_list.push(format!("item-{i}").into_bytes());
        big_set.push(format!("m{i}").into_bytes());
        big_hash.push(format!("f{i}").into_bytes());
        big_hash.push(format!("v{i}").into_bytes());
        big_zset.push(format!("{}", f64::from(i) / 7.0).into_bytes());
        big_zset.push(format!("m{i}").into_bytes());
    }
    cmds.extend([long_list, big_set, big_hash, big_zset]);
    cmds
}

fn run_all(client: &mut Client, cmds: &[Vec<Vec<u8>>]) -> TestResult {
    for c in cmds {
        let a: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
        if let Reply::Error(e) = client.command(&a)? {
            return Err(format!("{}: {e}", String::from_utf8_lossy(&c[0])).into());
        }
    }
    Ok(())
}

/// Runs `cmds` in `db` of `server`.
fn load(server: &RedisServer, db: u32, cmds: &[Vec<Vec<u8>>]) -> TestResult {
    let mut c = server.client()?;
    run_all(&mut c, &[args(&["SELECT", &db.to_string()])])?;
    run_all(&mut c, cmds)
}

/// One command in `db` of `server`.
fn on(server: &RedisServer, db: u32, a: &[&str]) -> TestResult<Reply> {
    let mut c = server.client()?;
    run_all(&mut c, &[args(&["SELECT", &db.to_string()])])?;
    let reply = c.cmd_str(a)?;
    if let Reply::Error(e) = &reply {
        return Err(format!("{a:?}: {e}").into());
    }
    Ok(reply)
}

/// Writes `cmds` to a cluster, each to the master of its key.
fn load_cluster(cluster: &RedisCluster, cmds: &[Vec<Vec<u8>>]) -> TestResult {
    for c in cmds {
        let key = if c[0] == b"XGROUP" { &c[2] } else { &c[1] };
        let a: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
        if let Reply::Error(e) = cluster.node_for_key(key).command(&a)? {
            return Err(format!("{}: {e}", String::from_utf8_lossy(&c[0])).into());
        }
    }
    Ok(())
}

/// A source and a destination holding the same dataset in db 0 and db 1.
fn twins() -> TestResult<(RedisServer, RedisServer)> {
    let source = RedisServer::start(V)?;
    let dest = RedisServer::start(V)?;
    for s in [&source, &dest] {
        load(s, 0, &dataset(""))?;
        load(s, 1, &dataset("db1:"))?;
    }
    Ok((source, dest))
}

fn endpoint(mode: InstanceMode, address: String) -> Option<RedisEndpoint> {
    Some(RedisEndpoint {
        mode: mode as i32,
        address,
        ..Default::default()
    })
}

fn spec(source: &RedisServer, dest: &RedisServer) -> TaskSpec {
    TaskSpec {
        source: endpoint(InstanceMode::Standalone, source.addr()),
        destination: endpoint(InstanceMode::Standalone, dest.addr()),
        ..Default::default()
    }
}

/// Default options with a short wait between rounds (damage stays, so every round sees it).
fn quick() -> VerifyOptions {
    VerifyOptions {
        round_delay: Duration::from_millis(50),
        ..VerifyOptions::default()
    }
}

/// Asserts that `r` reports exactly one difference and returns it.
fn only(r: &VerifyTaskResponse, db: u32, key: &str, kind: DifferenceKind) -> Difference {
    assert_eq!(r.differences, 1, "{r:#?}");
    assert_eq!(r.first_differences.len(), 1, "{r:#?}");
    let d = r.first_differences[0].clone();
    assert_eq!(
        (d.db, String::from_utf8_lossy(&d.key).into_owned(), d.kind),
        (db, key.to_owned(), kind as i32),
        "{d:?}"
    );
    d
}

/// Runs verify on twins after `damage` to the destination and returns the response.
async fn damaged(
    damage: impl FnOnce(&RedisServer) -> TestResult,
) -> TestResult<VerifyTaskResponse> {
    let (source, dest) = twins()?;
    damage(&dest)?;
    let r = verify(TASK, &spec(&source, &dest), quick()).await?;
    assert_eq!(r.source_keys, 2 * DATASET_KEYS, "{r:#?}");
    Ok(r)
}

#[tokio::test]
async fn identical_deployments_have_no_difference() -> TestResult {
    let (source, dest) = twins()?;
    let r = verify(TASK, &spec(&source, &dest), VerifyOptions::default()).await?;
    assert_eq!(r.differences, 0, "{r:#?}");
    assert!(r.first_differences.is_empty());
    assert_eq!(
        (r.source_keys, r.destination_keys),
        (2 * DATASET_KEYS, 2 * DATASET_KEYS)
    );
    Ok(())
}

#[tokio::test]
async fn changed_string_is_a_value_difference() -> TestResult {
    let r = damaged(|d| on(d, 0, &["SET", "str", "hellO"]).map(drop)).await?;
    let d = only(&r, 0, "str", DifferenceKind::Value);
    assert_eq!(d.detail, r#"source "hello", destination "hellO""#);
    Ok(())
}

#[tokio::test]
async fn missing_key_is_reported_in_its_db() -> TestResult {
    let r = damaged(|d| on(d, 1, &["DEL", "db1:list"]).map(drop)).await?;
    only(&r, 1, "db1:list", DifferenceKind::Missing);
    assert_eq!(r.destination_keys, 2 * DATASET_KEYS - 1);
    Ok(())
}

#[tokio::test]
async fn extra_key_is_reported() -> TestResult {
    let r = damaged(|d| on(d, 0, &["SADD", "extra", "1"]).map(drop)).await?;
    let d = only(&r, 0, "extra", DifferenceKind::Extra);
    assert!(d.detail.contains("not on the source"), "{d:?}");
    assert_eq!(r.destination_keys, 2 * DATASET_KEYS + 1);
    Ok(())
}

fn numbers(text: &str) -> Vec<i64> {
    text.split(|c: char| !c.is_ascii_digit() && c != '-')
        .filter_map(|n| n.parse().ok())
        .collect()
}

#[tokio::test]
async fn wrong_ttl_is_a_ttl_difference() -> TestResult {
    let r = damaged(|d| on(d, 0, &["PEXPIRE", "ttl-str", "1200000"]).map(drop)).await?;
    let d = only(&r, 0, "ttl-str", DifferenceKind::Ttl);
    let n = numbers(&d.detail);
    assert_eq!(n.len(), 2, "{d:?}");
    assert!(
        (590_000..=600_000).contains(&n[0]) && (1_190_000..=1_200_000).contains(&n[1]),
        "{d:?}"
    );
    Ok(())
}

#[tokio::test]
async fn ttl_on_one_side_only_is_a_ttl_difference() -> TestResult {
    let r = damaged(|d| on(d, 1, &["PERSIST", "db1:ttl-hash"]).map(drop)).await?;
    let d = only(&r, 1, "db1:ttl-hash", DifferenceKind::Ttl);
    assert!(d.detail.ends_with("destination PTTL -1 (no TTL)"), "{d:?}");
    Ok(())
}

#[tokio::test]
async fn wrong_type_is_a_type_difference() -> TestResult {
    let r = damaged(|d| {
        on(d, 0, &["DEL", "str"])?;
        on(d, 0, &["RPUSH", "str", "hello"]).map(drop)
    })
    .await?;
    let d = only(&r, 0, "str", DifferenceKind::Type);
    assert_eq!(d.detail, "source string, destination list");
    Ok(())
}

#[tokio::test]
async fn zset_score_off_in_the_last_digit_is_a_value_difference() -> TestResult {
    let r = damaged(|d| on(d, 0, &["ZADD", "zset", "0.10000000000000002", "e"]).map(drop)).await?;
    let d = only(&r, 0, "zset", DifferenceKind::Value);
    assert_eq!(d.detail, r#"member "e": score 0.1 vs 0.10000000000000002"#);
    Ok(())
}

#[tokio::test]
async fn list_in_another_order_is_a_value_difference() -> TestResult {
    let r = damaged(|d| {
        on(d, 1, &["DEL", "db1:list"])?;
        on(d, 1, &["RPUSH", "db1:list", "c", "b", "a"]).map(drop)
    })
    .await?;
    let d = only(&r, 1, "db1:list", DifferenceKind::Value);
    assert_eq!(d.detail, r#"element 0: source "a", destination "c""#);
    Ok(())
}

#[tokio::test]
async fn hash_field_different_is_a_value_difference() -> TestResult {
    let r = damaged(|d| on(d, 0, &["HSET", "big-hash", "f1100", "other"]).map(drop)).await?;
    let d = only(&r, 0, "big-hash", DifferenceKind::Value);
    assert_eq!(
        d.detail,
        r#"field "f1100": source "v1100", destination "other""#
    );
    Ok(())
}

#[tokio::test]
async fn set_member_different_is_a_value_difference() -> TestResult {
    // Same cardinality, one member swapped, in a set bigger than one SSCAN page.
    let r = damaged(|d| {
        on(d, 1, &["SREM", "db1:big-set", "m700"])?;
        on(d, 1, &["SADD", "db1:big-set", "intruder"]).map(drop)
    })
    .await?;
    let d = only(&r, 1, "db1:big-set", DifferenceKind::Value);
    assert_eq!(d.detail, r#"member "m700" is not on the destination"#);
    Ok(())
}

#[tokio::test]
async fn stream_group_position_is_a_value_difference() -> TestResult {
    let r = damaged(|d| on(d, 0, &["XGROUP", "SETID", "stream", "g1", "2-0"]).map(drop)).await?;
    let d = only(&r, 0, "stream", DifferenceKind::Value);
    assert_eq!(
        d.detail,
        "consumer groups [g1@1-1, g2@2-0] vs [g1@2-0, g2@2-0]"
    );
    Ok(())
}

#[tokio::test]
async fn reads_are_rate_limited() -> TestResult {
    let source = RedisServer::start(V)?;
    let dest = RedisServer::start(V)?;
    for s in [&source, &dest] {
        for i in 0..20 {
            on(s, 0, &["SET", &format!("k{i}"), "v"])?;
        }
    }
    // 20 keys compared, then 20 destination keys looked up on the source: 40 reads of
    // the source at 20 per second, after a burst of 2.
    let options = VerifyOptions {
        max_keys_per_second: 20,
        ..quick()
    };
    let start = Instant::now();
    let r = verify(TASK, &spec(&source, &dest), options).await?;
    let took = start.elapsed();
    assert_eq!(
        (r.differences, r.source_keys, r.destination_keys),
        (0, 20, 20)
    );
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(10),
        "{took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn db_mapping_is_followed() -> TestResult {
    let source = RedisServer::start(V)?;
    let dest = RedisServer::start(V)?;
    load(&source, 1, &dataset("db1:"))?;
    load(&dest, 5, &dataset("db1:"))?;
    // Not the task's business: the destination's db 1 receives nothing from source db 1.
    on(&dest, 1, &["SET", "unrelated", "x"])?;
    let mut spec = spec(&source, &dest);
    spec.databases = vec![1];
    spec.db_mapping = HashMap::from([(1, 5)]);
    let r = verify(TASK, &spec, quick()).await?;
    assert_eq!(r.differences, 0, "{r:#?}");
    assert_eq!(
        (r.source_keys, r.destination_keys),
        (DATASET_KEYS, DATASET_KEYS)
    );

    // A damage in db 5 is reported with the source's numbering.
    on(&dest, 5, &["DEL", "db1:hash"])?;
    let r = verify(TASK, &spec, quick()).await?;
    only(&r, 1, "db1:hash", DifferenceKind::Missing);
    Ok(())
}

#[tokio::test]
async fn own_checkpoint_and_heartbeat_keys_are_ignored() -> TestResult {
    let (source, dest) = twins()?;
    on(
        &dest,
        0,
        &[
            "HSET",
            "redis-sync:checkpoint:task-7",
            "standalone",
            "1|3|100|0|0|0|10|0|abc",
        ],
    )?;
    // The heartbeat differs between the sides (it keeps changing): not reported either.
    on(
        &source,
        0,
        &[
            "SET",
            "DTS_REDIS_TIMESTAMP_HEARTBEAT:task-7",
            "1000",
            "PX",
            "60000",
        ],
    )?;
    on(
        &dest,
        0,
        &["SET", "DTS_REDIS_TIMESTAMP_HEARTBEAT:task-7", "900"],
    )?;
    on(
        &dest,
        0,
        &["SET", "DTS_REDIS_TIMESTAMP_HEARTBEAT:task-7:{0}", "900"],
    )?;
    // Another task's heartbeat only on the destination (say, a task that reads the
    // destination as its source): the tool's key, not this task's data.
    on(
        &dest,
        0,
        &["SET", "DTS_REDIS_TIMESTAMP_HEARTBEAT:task-70", "900"],
    )?;
    let r = verify(TASK, &spec(&source, &dest), quick()).await?;
    assert_eq!(r.differences, 0, "{r:#?}");
    assert_eq!(
        (r.source_keys, r.destination_keys),
        (2 * DATASET_KEYS, 2 * DATASET_KEYS)
    );
    // On the source it is data to this task (an upstream task in a cascade): its
    // presence is compared, not its ever-changing value.
    on(
        &source,
        0,
        &["SET", "DTS_REDIS_TIMESTAMP_HEARTBEAT:task-70", "1000"],
    )?;
    let r = verify(TASK, &spec(&source, &dest), quick()).await?;
    assert_eq!(r.differences, 0, "{r:#?}");
    on(&dest, 0, &["DEL", "DTS_REDIS_TIMESTAMP_HEARTBEAT:task-70"])?;
    let r = verify(TASK, &spec(&source, &dest), quick()).await?;
    only(
        &r,
        0,
        "DTS_REDIS_TIMESTAMP_HEARTBEAT:task-70",
        DifferenceKind::Missing,
    );
    on(
        &source,
        0,
        &["DEL", "DTS_REDIS_TIMESTAMP_HEARTBEAT:task-70"],
    )?;

    // A custom prefix replaces the default one.
    on(&dest, 1, &["SET", "hb:task-7", "1"])?;
    let mut spec = spec(&source, &dest);
    spec.heartbeat = Some(HeartbeatOptions {
        key_prefix: "hb".into(),
        ..Default::default()
    });
    let r = verify(TASK, &spec, quick()).await?;
    let mut kinds: Vec<(u32, String, i32)> = r
        .first_differences
        .iter()
        .map(|d| (d.db, String::from_utf8_lossy(&d.key).into_owned(), d.kind))
        .collect();
    kinds.sort();
    let extra = DifferenceKind::Extra as i32;
    assert_eq!(
        kinds,
        vec![
            (
                0,
                "DTS_REDIS_TIMESTAMP_HEARTBEAT:task-7".into(),
                DifferenceKind::Value as i32
            ),
            (0, "DTS_REDIS_TIMESTAMP_HEARTBEAT:task-7:{0}".into(), extra),
        ],
        "{r:#?}"
    );
    assert_eq!(r.differences, 2);
    Ok(())
}

fn scan_calls(server: &RedisServer) -> TestResult<u64> {
    let info = server.info("commandstats")?;
    Ok(info
        .get("cmdstat_scan")
        .and_then(|v| v.split(',').find_map(|kv| kv.strip_prefix("calls=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

#[tokio::test]
async fn a_difference_fixed_before_the_next_round_is_not_reported() -> TestResult {
    let (source, dest) = twins()?;
    on(&dest, 0, &["SET", "str", "stale"])?;
    let spec = spec(&source, &dest);
    let once = VerifyOptions {
        rounds: 1,
        ..quick()
    };
    only(
        &verify(TASK, &spec, once).await?,
        0,
        "str",
        DifferenceKind::Value,
    );

    // The destination is scanned after every source key was compared, so a SCAN on the
    // destination means round 1 has read "str": fix it then, while the rounds wait.
    let baseline = scan_calls(&dest)?;
    let dest = std::sync::Arc::new(dest);
    let fixer = {
        let dest = dest.clone();
        tokio::task::spawn_blocking(move || -> TestResult<Duration> {
            let start = Instant::now();
            while scan_calls(&dest)? == baseline {
                if start.elapsed() > Duration::from_secs(30) {
                    return Err("verify never scanned the destination".into());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            on(&dest, 0, &["SET", "str", "hello"])?;
            Ok(start.elapsed())
        })
    };
    let options = VerifyOptions {
        rounds: 3,
        round_delay: Duration::from_secs(1),
        ..VerifyOptions::default()
    };
    let start = Instant::now();
    let r = verify(TASK, &spec, options).await?;
    let took = start.elapsed();
    let fixed_after = fixer.await??;
    assert_eq!(r.differences, 0, "fixed after {fixed_after:?}: {r:#?}");
    // Round 1 found the difference and waited for round 2 (it only waits for that).
    assert!(took >= Duration::from_secs(1), "{took:?}");
    Ok(())
}

#[tokio::test]
async fn big_keys_compare_lengths_only() -> TestResult {
    let source = RedisServer::start(V)?;
    let dest = RedisServer::start(V)?;
    for s in [&source, &dest] {
        for chunk in 0..20 {
            let mut cmd = args(&["RPUSH", "big"]);
            cmd.extend((0..1000).map(|i| format!("e{}", chunk * 1000 + i).into_bytes()));
            load(s, 0, &[cmd])?;
        }
    }
    on(&dest, 0, &["LSET", "big", "15000", "changed"])?;
    let spec = spec(&source, &dest);
    let big_10k = VerifyOptions {
        big_key_elements: 10_000,
        ..quick()
    };
    let r = verify(TASK, &spec, big_10k.clone()).await?;
    assert_eq!(r.differences, 0, "{r:#?}");

    // Compared element by element (40 pages) when the threshold allows it.
    let r = verify(
        TASK,
        &spec,
        VerifyOptions {
            big_key_elements: 100_000,
            ..quick()
        },
    )
    .await?;
    let d = only(&r, 0, "big", DifferenceKind::Value);
    assert_eq!(
        d.detail,
        r#"element 15000: source "e15000", destination "changed""#
    );

    on(&dest, 0, &["RPUSH", "big", "one more"])?;
    let r = verify(TASK, &spec, big_10k).await?;
    let d = only(&r, 0, "big", DifferenceKind::Value);
    assert_eq!(d.detail, "length 20000 vs 20001");
    Ok(())
}

#[tokio::test]
async fn cluster_destination_against_standalone_source() -> TestResult {
    let source = RedisServer::start(V)?;
    let cluster = RedisCluster::start(V, 3, 0)?;
    load(&source, 0, &dataset(""))?;
    load_cluster(&cluster, &dataset(""))?;
    let seed = cluster.nodes()[0].addr();
    let spec = TaskSpec {
        source: endpoint(InstanceMode::Standalone, source.addr()),
        destination: endpoint(InstanceMode::Cluster, seed.clone()),
        ..Default::default()
    };
    let r = verify(TASK, &spec, quick()).await?;
    assert_eq!(r.differences, 0, "{r:#?}");
    assert_eq!(
        (r.source_keys, r.destination_keys),
        (DATASET_KEYS, DATASET_KEYS)
    );

    // A key on a master other than the seed: reads are routed by slot.
    let key = ["zset", "hash", "list", "str", "stream", "set"]
        .into_iter()
        .find(|k| cluster.node_for_key(k.as_bytes()).addr() != seed)
        .ok_or("every key is on the seed")?;
    cluster.node_for_key(key.as_bytes()).cmd_ok(&["DEL", key])?;
    let r = verify(TASK, &spec, quick()).await?;
    only(&r, 0, key, DifferenceKind::Missing);
    assert_eq!(r.destination_keys, DATASET_KEYS - 1);

    // Source db 1 has nowhere to go on a cluster without a mapping.
    on(&source, 1, &["SET", "k", "v"])?;
    let err = verify(TASK, &spec, quick())
        .await
        .err()
        .ok_or("db 1 into a cluster verified")?;
    assert!(matches!(err, VerifyError::Spec(_)), "{err}");
    Ok(())
}

#[tokio::test]
async fn unreachable_and_refused_sides_are_named() -> TestResult {
    let source = RedisServer::start(V)?;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.to_string()
    };
    let mut spec = TaskSpec {
        source: endpoint(InstanceMode::Standalone, source.addr()),
        destination: endpoint(InstanceMode::Standalone, closed.clone()),
        ..Default::default()
    };
    let err = verify(TASK, &spec, quick())
        .await
        .err()
        .ok_or("verified against a closed port")?;
    assert!(
        matches!(&err, VerifyError::Unavailable { side: Side::Destination, address, .. } if *address == closed),
        "{err}"
    );
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        err.to_string()
            .starts_with(&format!("destination {closed} is unavailable")),
        "{err}"
    );

    let locked = RedisServer::builder(V).password("right-password").start()?;
    for password in ["wrong-password", ""] {
        spec.source = endpoint(InstanceMode::Standalone, locked.addr());
        spec.source.as_mut().ok_or("source")?.password = password.into();
        spec.destination = endpoint(InstanceMode::Standalone, source.addr());
        let err = verify(TASK, &spec, quick())
            .await
            .err()
            .ok_or("verified with a wrong password")?;
        assert!(
            matches!(&err, VerifyError::Auth { side: Side::Source, address, .. } if *address == locked.addr()),
            "{err}"
        );
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(!err.to_string().contains("wrong-password"), "{err}");
    }
    Ok(())
}
