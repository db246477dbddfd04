//! Clusters on the oldest and newest cluster-capable versions form, route keys by
//! slot exactly as Redis does, and fail over.

use redis_sync_testkit::{HarnessError, RedisCluster, RedisVersion, Reply, key_slot};

fn exercise(version: RedisVersion) -> Result<(), HarnessError> {
    let cluster = RedisCluster::start(version, 3, 1)?;
    assert_eq!(cluster.nodes().len(), 6);
    assert_eq!(cluster.masters().len(), 3);
    assert_eq!(cluster.replicas().len(), 3);

    for node in cluster.nodes() {
        let info = node.cmd_ok(&["CLUSTER", "INFO"])?;
        let info = info.as_str().unwrap_or_default();
        assert!(info.contains("cluster_state:ok"), "{}: {info}", node.addr());
        assert_eq!(node.id().len(), 40);
    }

    let mut keys: Vec<String> = [
        "foo",
        "bar",
        "{user1000}.following",
        "{user1000}.followers",
        "foo{}{bar}",
        "foo{{bar}}zap",
        "",
        "\u{e9}t\u{e9}",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    keys.extend((0..40).map(|i| format!("key:{i}")));

    let mut per_master = vec![0; cluster.nodes().len()];
    for key in &keys {
        let slot = key_slot(key.as_bytes());
        // Our hashing agrees with Redis's.
        let redis_slot = cluster.nodes()[0].cmd_ok(&["CLUSTER", "KEYSLOT", key])?;
        assert_eq!(redis_slot, Reply::Int(i64::from(slot)), "slot of {key:?}");

        let owner = cluster.node_for_key(key.as_bytes());
        assert!(cluster.master_of(owner).is_none());
        assert!(owner.cmd_ok(&["SET", key, key])?.is_ok(), "{key:?}");
        per_master[owner.index()] += 1;
        for other in cluster.masters() {
            if other.index() == owner.index() {
                continue;
            }
            let reply = other.cmd_str(&["SET", key, "x"])?;
            let expected = format!("MOVED {slot} 127.0.0.1:{}", owner.port());
            assert_eq!(
                reply.as_error(),
                Some(expected.as_str()),
                "{key:?} on {}",
                other.addr()
            );
        }
    }
    assert!(
        cluster.masters().iter().all(|m| per_master[m.index()] > 0),
        "keys did not reach every master: {per_master:?}"
    );

    // Manual failover of the master owning "foo".
    let old_master = cluster.node_for_key(b"foo");
    let replica = cluster.replicas_of(old_master)[0];
    cluster.failover(replica)?;
    let new_master = cluster.node_for_key(b"foo");
    assert_eq!(new_master.index(), replica.index());
    assert_eq!(
        cluster.master_of(old_master).map(|m| m.index()),
        Some(replica.index())
    );
    assert_eq!(new_master.info_field("replication", "role")?, "master");
    assert_eq!(
        new_master.cmd_str(&["GET", "foo"])?,
        Reply::Bulk(Some(b"foo".to_vec()))
    );
    let moved = old_master.cmd_str(&["GET", "foo"])?;
    assert_eq!(
        moved.as_error(),
        Some(format!("MOVED {} 127.0.0.1:{}", key_slot(b"foo"), new_master.port()).as_str())
    );

    // The harness's view matches a fresh read of the cluster.
    let before: Vec<usize> = (0..16384u16)
        .step_by(97)
        .map(|s| cluster.node_for_slot(s).index())
        .collect();
    cluster.refresh()?;
    let after: Vec<usize> = (0..16384u16)
        .step_by(97)
        .map(|s| cluster.node_for_slot(s).index())
        .collect();
    assert_eq!(before, after);

    let pids: Vec<u32> = cluster.nodes().iter().map(|n| n.pid()).collect();
    drop(cluster);
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
    Ok(())
}

#[test]
fn cluster_3_2() {
    exercise(RedisVersion::V3_2).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn cluster_7_0() {
    exercise(RedisVersion::V7_0).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn cluster_needs_3_0() {
    let err = RedisCluster::start(RedisVersion::V2_8, 3, 0).unwrap_err();
    assert!(
        err.to_string().contains("2.8 does not support cluster"),
        "{err}"
    );
}
