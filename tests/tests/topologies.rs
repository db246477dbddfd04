//! Every topology the mission names, with both binaries as real processes and real
//! servers: one-to-one from every supported source version, one-to-many, cascade, and
//! clusters on either side. Each ends with VerifyTask reporting zero differences.

use std::time::Duration;

use redis_sync_e2e::sync::{
    cluster, create_and_start, spec, standalone, start_services, stop, task_client,
    verify_until_equal, wait_state,
};
use redis_sync_proto::v1::TaskState;
use redis_sync_testkit::{RedisCluster, RedisServer, RedisVersion};

const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes `args` to whichever node owns the key (`key_at` is the key's index in args).
trait Target {
    fn write(&self, args: &[&str]);
}

impl Target for RedisServer {
    fn write(&self, args: &[&str]) {
        let reply = self.cmd_str(args).expect("write");
        assert!(reply.as_error().is_none(), "{args:?}: {reply}");
    }
}

impl Target for RedisCluster {
    fn write(&self, args: &[&str]) {
        let node = self.node_for_key(args[1].as_bytes());
        let reply = node.cmd_str(args).expect("write");
        assert!(reply.as_error().is_none(), "{args:?}: {reply}");
    }
}

/// A dataset with every basic type, tricky scores, binary-ish values and TTLs.
fn seed(t: &dyn Target, tag: &str) {
    for i in 0..50 {
        t.write(&["SET", &format!("{tag}:s:{i}"), &format!("value-{i}")]);
    }
    t.write(&["SET", &format!("{tag}:int"), "12345"]);
    t.write(&["SET", &format!("{tag}:ttl"), "x", "EX", "3600"]);
    t.write(&["RPUSH", &format!("{tag}:list"), "a", "b", "c", "a"]);
    t.write(&["HMSET", &format!("{tag}:hash"), "f1", "v1", "f2", "v2"]);
    t.write(&["SADD", &format!("{tag}:set"), "x", "y", "z"]);
    t.write(&[
        "ZADD",
        &format!("{tag}:zset"),
        "7.123456789",
        "a",
        "-inf",
        "b",
        "+inf",
        "c",
        "1e-300",
        "d",
    ]);
}

/// Writes while the task runs: counters, appends, list pushes, TTL changes, deletes.
fn workload(t: &dyn Target, tag: &str) {
    for i in 0..100 {
        t.write(&["INCR", &format!("{tag}:counter")]);
        t.write(&["APPEND", &format!("{tag}:log"), &format!("{i},")]);
        t.write(&["LPUSH", &format!("{tag}:list"), &format!("n{i}")]);
        t.write(&["HSET", &format!("{tag}:hash"), &format!("f{i}"), "x"]);
        t.write(&["ZINCRBY", &format!("{tag}:zset"), "0.1", "a"]);
    }
    t.write(&["EXPIRE", &format!("{tag}:s:1"), "600"]);
    t.write(&["DEL", &format!("{tag}:s:2")]);
    t.write(&["SREM", &format!("{tag}:set"), "y"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_from_every_source_version() {
    let (_ingest, apply) = start_services().await;
    let mut client = task_client(apply.endpoint()).await;
    for version in RedisVersion::ALL {
        // Into 7.0 (newer) and, for every version, into the same version.
        for dest_version in [RedisVersion::V7_0, version] {
            let source = RedisServer::start(version).expect("source");
            let destination = RedisServer::start(dest_version).expect("destination");
            seed(&source, "k");
            let id = create_and_start(
                &mut client,
                spec(
                    &format!("{version}->{dest_version}"),
                    standalone(source.addr()),
                    standalone(destination.addr()),
                ),
            )
            .await;
            wait_state(&mut client, &id, TaskState::Synchronizing, SYNC_TIMEOUT).await;
            workload(&source, "k");
            let report = verify_until_equal(&mut client, &id, SYNC_TIMEOUT).await;
            assert_eq!(
                report.differences, 0,
                "{version} -> {dest_version}: {report:#?}"
            );
            assert!(
                report.source_keys > 50,
                "verification read the source: {report:?}"
            );
            stop(&mut client, &id).await;
            if dest_version == version {
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_to_two_destinations() {
    let (_ingest, apply) = start_services().await;
    let mut client = task_client(apply.endpoint()).await;
    let source = RedisServer::start(RedisVersion::V7_0).unwrap();
    let (d1, d2) = (
        RedisServer::start(RedisVersion::V7_0).unwrap(),
        RedisServer::start(RedisVersion::V7_0).unwrap(),
    );
    seed(&source, "m");
    let t1 = create_and_start(
        &mut client,
        spec("a", standalone(source.addr()), standalone(d1.addr())),
    )
    .await;
    let t2 = create_and_start(
        &mut client,
        spec("b", standalone(source.addr()), standalone(d2.addr())),
    )
    .await;
    for id in [&t1, &t2] {
        wait_state(&mut client, id, TaskState::Synchronizing, SYNC_TIMEOUT).await;
    }
    workload(&source, "m");
    for id in [&t1, &t2] {
        let report = verify_until_equal(&mut client, id, SYNC_TIMEOUT).await;
        assert_eq!(report.differences, 0, "{report:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_a_to_b_to_c() {
    let (_ingest, apply) = start_services().await;
    let mut client = task_client(apply.endpoint()).await;
    let a = RedisServer::start(RedisVersion::V6_2).unwrap();
    let b = RedisServer::start(RedisVersion::V7_0).unwrap();
    let c = RedisServer::start(RedisVersion::V7_0).unwrap();
    seed(&a, "c");
    let ab = create_and_start(
        &mut client,
        spec("a->b", standalone(a.addr()), standalone(b.addr())),
    )
    .await;
    wait_state(&mut client, &ab, TaskState::Synchronizing, SYNC_TIMEOUT).await;
    let mut bc_spec = spec("b->c", standalone(b.addr()), standalone(c.addr()));
    // B already holds A's data (and the first task's checkpoint): nothing to refuse there,
    // C is empty.
    bc_spec.conflict_mode = redis_sync_proto::v1::ConflictMode::Intercept as i32;
    let bc = create_and_start(&mut client, bc_spec).await;
    wait_state(&mut client, &bc, TaskState::Synchronizing, SYNC_TIMEOUT).await;
    workload(&a, "c");
    for id in [&ab, &bc] {
        let report = verify_until_equal(&mut client, id, SYNC_TIMEOUT).await;
        assert_eq!(report.differences, 0, "{report:#?}");
    }
    // A's writes went through B to C.
    let counter = c.cmd_str(&["GET", "c:counter"]).unwrap();
    assert_eq!(counter.as_str(), Some("100"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_to_cluster_and_standalone_to_cluster() {
    let (_ingest, apply) = start_services().await;
    let mut client = task_client(apply.endpoint()).await;
    let source = RedisCluster::start(RedisVersion::V7_0, 3, 0).unwrap();
    let destination = RedisCluster::start(RedisVersion::V7_0, 3, 0).unwrap();
    seed(&source, "{x}");
    seed(&source, "{y}");
    seed(&source, "{z}");
    let id = create_and_start(
        &mut client,
        spec(
            "cluster",
            cluster(source.addrs()[0].clone()),
            cluster(destination.addrs()[0].clone()),
        ),
    )
    .await;
    wait_state(&mut client, &id, TaskState::Synchronizing, SYNC_TIMEOUT).await;
    workload(&source, "{x}");
    workload(&source, "{z}");
    let report = verify_until_equal(&mut client, &id, SYNC_TIMEOUT).await;
    assert_eq!(report.differences, 0, "{report:#?}");

    let standalone_source = RedisServer::start(RedisVersion::V7_0).unwrap();
    let destination2 = RedisCluster::start(RedisVersion::V7_0, 3, 0).unwrap();
    seed(&standalone_source, "s");
    // A cluster has only database 0: the task names the standalone database it copies.
    let mut to_cluster = spec(
        "to-cluster",
        standalone(standalone_source.addr()),
        cluster(destination2.addrs()[0].clone()),
    );
    to_cluster.databases = vec![0];
    let id = create_and_start(&mut client, to_cluster).await;
    wait_state(&mut client, &id, TaskState::Synchronizing, SYNC_TIMEOUT).await;
    workload(&standalone_source, "s");
    let report = verify_until_equal(&mut client, &id, SYNC_TIMEOUT).await;
    assert_eq!(report.differences, 0, "{report:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_is_not_a_difference_and_does_not_outlive_the_task() {
    let (_ingest, apply) = start_services().await;
    let mut client = task_client(apply.endpoint()).await;
    let source = RedisServer::start(RedisVersion::V7_0).unwrap();
    let destination = RedisServer::start(RedisVersion::V7_0).unwrap();
    let mut s = spec(
        "hb",
        standalone(source.addr()),
        standalone(destination.addr()),
    );
    s.heartbeat = Some(redis_sync_proto::v1::HeartbeatOptions {
        interval_ms: 200,
        ..Default::default()
    });
    let id = create_and_start(&mut client, s).await;
    let task = wait_state(&mut client, &id, TaskState::Synchronizing, SYNC_TIMEOUT).await;
    let _ = task;
    // The heartbeat reaches the destination and yields a delay.
    let deadline = std::time::Instant::now() + SYNC_TIMEOUT;
    loop {
        let task = redis_sync_e2e::sync::get(&mut client, &id).await;
        if task
            .status
            .as_ref()
            .is_some_and(|s| s.heartbeat_delay_ms >= 0)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no heartbeat delay: {task:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let key = format!("DTS_REDIS_TIMESTAMP_HEARTBEAT:{id}");
    let keys = destination
        .cmd_str(&["KEYS", "DTS_REDIS_TIMESTAMP_HEARTBEAT*"])
        .unwrap();
    assert!(
        format!("{keys}").contains(&key),
        "heartbeat key {key} on the destination: {keys}"
    );
    let report = verify_until_equal(&mut client, &id, SYNC_TIMEOUT).await;
    assert_eq!(report.differences, 0, "{report:#?}");
    stop(&mut client, &id).await;
    let ttl = destination
        .cmd_str(&["PTTL", &key])
        .unwrap()
        .as_int()
        .unwrap();
    assert!(
        ttl > 0,
        "the heartbeat key carries a TTL so it does not outlive the task: {ttl}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_to_standalone() {
    let (_ingest, apply) = start_services().await;
    let mut client = task_client(apply.endpoint()).await;
    let source = RedisCluster::start(RedisVersion::V7_0, 3, 0).unwrap();
    let destination = RedisServer::start(RedisVersion::V7_0).unwrap();
    seed(&source, "{p}");
    seed(&source, "{q}");
    let id = create_and_start(
        &mut client,
        spec(
            "from-cluster",
            cluster(source.addrs()[0].clone()),
            standalone(destination.addr()),
        ),
    )
    .await;
    wait_state(&mut client, &id, TaskState::Synchronizing, SYNC_TIMEOUT).await;
    workload(&source, "{p}");
    workload(&source, "{q}");
    let report = verify_until_equal(&mut client, &id, SYNC_TIMEOUT).await;
    assert_eq!(report.differences, 0, "{report:#?}");
    // Every master's keys landed in the one destination database.
    let counter = destination.cmd_str(&["GET", "{q}:counter"]).unwrap();
    assert_eq!(counter.as_str(), Some("100"));
}
