//! Syncs that stay equal under every write command, not just a friendly few: the source is
//! seeded with every type, a task copies it, VerifyTask must find no difference, then a
//! seeded random workload (`redis_sync_e2e::workload`) issues a few thousand operations
//! covering the whole catalogue of the source's version while the task streams them, and
//! VerifyTask must again find no difference (type, value and TTL of every key, in both
//! directions).
//!
//! Covered: standalone → standalone from every installed source version into 7.0 and into
//! the same version; cluster → cluster on 7.0; standalone → cluster on 7.0 with one source
//! db ≠ 0 mapped to the cluster's db 0.
//!
//! The seed is printed at the start and in every failure; `REDIS_SYNC_WORKLOAD_SEED=<n>`
//! replays it. A failed comparison lists, for each differing key, the operations of the
//! workload that touched it.

use std::time::{Duration, Instant};

use redis_sync_e2e::{
    sync::{
        cluster, create_and_start, get, spec, standalone, start_services, stop, task_client,
        verify_until_equal, wait_state,
    },
    workload::{SEED_ENV, Shape, Target, Workload, seed_from_env},
};
use redis_sync_proto::v1::{TaskState, VerifyTaskResponse};
use redis_sync_testkit::{RedisCluster, RedisServer, RedisVersion};

const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// Operations per run: enough that the weighted draw after the catalogue pass mixes every
/// operation with every other many times, small enough for two cores.
const OPS: usize = 2_500;
/// Databases a standalone workload writes to (not only 0, and not contiguous).
const DBS: [u32; 3] = [0, 1, 3];

/// The report, and for each listed difference the workload's operations on that key.
fn explain(report: &VerifyTaskResponse, workload: &Workload) -> String {
    let mut out = format!(
        "{} differences ({} source keys, {} destination keys); seed {} ({SEED_ENV}={} replays it)\n",
        report.differences,
        report.source_keys,
        report.destination_keys,
        workload.seed(),
        workload.seed()
    );
    for d in report.first_differences.iter().take(8) {
        out.push_str(&format!(
            "- db {} {} kind {} {}\n",
            d.db,
            d.key.escape_ascii(),
            d.kind,
            d.detail
        ));
        let history = workload.history_of(d.db, &d.key);
        let skip = history.len().saturating_sub(30);
        for line in &history[skip..] {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}

/// Verifies until equal and asserts no difference and a non-empty source.
async fn assert_equal(
    client: &mut redis_sync_proto::v1::task_service_client::TaskServiceClient<
        tonic::transport::Channel,
    >,
    id: &str,
    workload: &Workload,
    when: &str,
) {
    let report = verify_until_equal(client, id, SYNC_TIMEOUT).await;
    if report.differences > 0 {
        let task = get(client, id).await;
        panic!(
            "{when}: task {:?} {}\n{}",
            TaskState::try_from(task.state).unwrap_or(TaskState::Unspecified),
            task.failure_reason,
            explain(&report, workload)
        );
    }
    assert!(
        report.source_keys > 0 && report.destination_keys > 0,
        "{when}: the comparison read both sides: {report:?}"
    );
}

fn assert_covered(workload: &Workload, what: &str) {
    let missing = workload.missing();
    assert!(
        missing.is_empty(),
        "{what}: operations of the catalogue never issued: {missing:?} (seed {})",
        workload.seed()
    );
}

/// Standalone `version` into a fresh standalone `dest_version`, all databases.
async fn standalone_pair(version: RedisVersion, dest_version: RedisVersion, seed: u64) {
    let started = Instant::now();
    let (_ingest, apply) = start_services().await;
    let mut client = task_client(apply.endpoint()).await;
    let source = RedisServer::start(version).expect("source");
    let destination = RedisServer::start(dest_version).expect("destination");
    let what = format!("{version} -> {dest_version}");
    let mut workload = Workload::new(version, Shape::Standalone { dbs: DBS.to_vec() }, seed);
    let mut target = Target::standalone(&source);
    workload.seed_data(&mut target);
    let id = create_and_start(
        &mut client,
        spec(
            &format!("workload {what}"),
            standalone(source.addr()),
            standalone(destination.addr()),
        ),
    )
    .await;
    wait_state(&mut client, &id, TaskState::Synchronizing, SYNC_TIMEOUT).await;
    assert_equal(
        &mut client,
        &id,
        &workload,
        &format!("{what} after the full sync"),
    )
    .await;

    workload.run(&mut target, OPS);
    assert_covered(&workload, &what);
    assert_equal(
        &mut client,
        &id,
        &workload,
        &format!("{what} after {} operations", workload.len()),
    )
    .await;
    stop(&mut client, &id).await;
    eprintln!(
        "{what}: {} operations, all {} of the catalogue among them, equal; {:?}\n{:?}",
        workload.len(),
        workload.catalogue().len(),
        started.elapsed(),
        workload.issued()
    );
}

/// Into 7.0 and into the same version.
async fn from(version: RedisVersion) {
    let seed = seed_from_env();
    eprintln!("workload seed {seed} ({SEED_ENV}={seed} replays it)");
    standalone_pair(version, RedisVersion::V7_0, seed).await;
    if version != RedisVersion::V7_0 {
        standalone_pair(version, version, seed).await;
    }
}

/// One test per source version, so that nextest runs two at a time.
mod every_source_version_under_a_random_workload {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn from_2_8() {
        from(RedisVersion::V2_8).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn from_3_2() {
        from(RedisVersion::V3_2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn from_5_0() {
        from(RedisVersion::V5_0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn from_6_0() {
        from(RedisVersion::V6_0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn from_6_2() {
        from(RedisVersion::V6_2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn from_7_0() {
        from(RedisVersion::V7_0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_to_cluster_under_a_random_workload() {
    let seed = seed_from_env();
    eprintln!("workload seed {seed} ({SEED_ENV}={seed} replays it)");
    let (_ingest, apply) = start_services().await;
    let mut client = task_client(apply.endpoint()).await;
    let source = RedisCluster::start(RedisVersion::V7_0, 3, 0).expect("source cluster");
    let destination = RedisCluster::start(RedisVersion::V7_0, 3, 0).expect("destination cluster");
    let mut workload = Workload::new(RedisVersion::V7_0, Shape::Cluster, seed);
    let mut target = Target::cluster(&source);
    workload.seed_data(&mut target);
    let id = create_and_start(
        &mut client,
        spec(
            "workload cluster -> cluster",
            cluster(source.addrs()[0].clone()),
            cluster(destination.addrs()[0].clone()),
        ),
    )
    .await;
    wait_state(&mut client, &id, TaskState::Synchronizing, SYNC_TIMEOUT).await;
    assert_equal(&mut client, &id, &workload, "after the full sync").await;

    workload.run(&mut target, OPS);
    assert_covered(&workload, "cluster -> cluster");
    assert_equal(&mut client, &id, &workload, "after the workload").await;
    // Every master of the source took writes, so every shard was streamed.
    for node in source.masters() {
        let keys = node.cmd_str(&["DBSIZE"]).unwrap().as_int().unwrap_or(0);
        assert!(keys > 0, "source master {} holds keys", node.addr());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_to_cluster_with_db_mapping_under_a_random_workload() {
    let seed = seed_from_env();
    eprintln!("workload seed {seed} ({SEED_ENV}={seed} replays it)");
    let (_ingest, apply) = start_services().await;
    let mut client = task_client(apply.endpoint()).await;
    let source = RedisServer::start(RedisVersion::V7_0).expect("source");
    let destination = RedisCluster::start(RedisVersion::V7_0, 3, 0).expect("destination cluster");
    // Databases the task does not copy hold keys too: none of them may reach the cluster
    // (an extra key on the destination is a difference).
    let noise = |round: &str| {
        for db in ["0", "5"] {
            let mut c = source.client().expect("client");
            assert!(c.cmd_str(&["SELECT", db]).unwrap().is_ok());
            for i in 0..20 {
                let key = format!("noise:{round}:{i}");
                assert!(c.cmd_str(&["SET", &key, "x"]).unwrap().is_ok());
                assert!(
                    c.cmd_str(&["RPUSH", &format!("{key}:l"), "y"])
                        .unwrap()
                        .as_int()
                        .is_some()
                );
            }
        }
    };
    noise("before");
    let mut workload = Workload::new(RedisVersion::V7_0, Shape::Standalone { dbs: vec![2] }, seed);
    let mut target = Target::standalone(&source);
    workload.seed_data(&mut target);
    let mut to_cluster = spec(
        "workload db 2 -> cluster",
        standalone(source.addr()),
        cluster(destination.addrs()[0].clone()),
    );
    to_cluster.databases = vec![2];
    to_cluster.db_mapping = [(2, 0)].into_iter().collect();
    let id = create_and_start(&mut client, to_cluster).await;
    wait_state(&mut client, &id, TaskState::Synchronizing, SYNC_TIMEOUT).await;
    assert_equal(&mut client, &id, &workload, "after the full sync").await;

    workload.run(&mut target, OPS);
    noise("after");
    assert_covered(&workload, "standalone db 2 -> cluster");
    assert_equal(&mut client, &id, &workload, "after the workload").await;
    assert!(
        workload.issued().get("SELECT").is_some_and(|n| *n > 0),
        "the workload selected db 2"
    );
}
