//! The writer against real Redis destinations, fed with hand-built change events whose
//! values come from a real source server (DUMP bodies) and whose commands are run on that
//! source too, so the two can be compared key by key.

mod sync_support;

use std::collections::HashMap;
use std::time::Duration;

use redis_sync_apply::dbmap::DbMap;
use redis_sync_apply::writer::{ShardWriter, WriteError, WriterOptions};
use redis_sync_proto::v1::{
    BytesList, ChangeEvent, ConflictMode, HashField, HashFields, InstanceMode, KeyRecord,
    RedisEndpoint, StreamChunk, StreamConsumer, StreamEntry, StreamGroup, StreamId, StreamMeta,
    StreamPendingEntry, SubscribeResponse, ValueChunk, ValueType, ZSetMember, ZSetMembers,
    change_event, key_record, value_chunk,
};
use redis_sync_telemetry::Metrics;
use redis_sync_testkit::{RedisCluster, RedisServer, RedisVersion};
use sync_support::{Side, Stream, TestResult, command, differences, dump_record, eventually, run};

fn endpoint(addr: &str, cluster: bool) -> RedisEndpoint {
    RedisEndpoint {
        mode: if cluster {
            InstanceMode::Cluster as i32
        } else {
            InstanceMode::Standalone as i32
        },
        address: addr.to_owned(),
        ..RedisEndpoint::default()
    }
}

fn options(
    task: &str,
    dest: RedisEndpoint,
    conflict: ConflictMode,
    dbs: &[u32],
    mapping: &[(u32, u32)],
    metrics: &Metrics,
) -> WriterOptions {
    let cluster = dest.mode == InstanceMode::Cluster as i32;
    WriterOptions {
        task_id: task.to_owned(),
        shard_id: "standalone".to_owned(),
        destination: dest,
        conflict,
        dbmap: DbMap::new(
            dbs,
            &mapping.iter().copied().collect::<HashMap<_, _>>(),
            cluster,
        ),
        multi_shard_source: false,
        metrics: metrics.clone(),
    }
}

fn chunk(
    db: u32,
    key: &[u8],
    t: ValueType,
    index: u32,
    last: bool,
    items: value_chunk::Items,
    expire_at_ms: i64,
) -> KeyRecord {
    KeyRecord {
        db,
        key: key.to_vec(),
        expire_at_ms,
        r#type: t as i32,
        value: Some(key_record::Value::Chunk(ValueChunk { items: Some(items) })),
        chunk_index: index,
        last_chunk: last,
        module_type: String::new(),
    }
}

fn sid(ms: u64, seq: u64) -> Option<StreamId> {
    Some(StreamId { ms, seq })
}

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Fills `src` with every type (db 0 and 2; db 1 is not selected) and returns the
/// snapshot events: DUMP bodies for small keys, typed chunks for the "big:" keys.
fn populate(src: &RedisServer, st: &mut Stream) -> TestResult<Vec<ChangeEvent>> {
    let big = "x".repeat(100_000);
    let cmds: Vec<(u32, Vec<&[u8]>)> = vec![
        (0, vec![b"SET", b"s", b"hello"]),
        (0, vec![b"SET", b"n", b"42"]),
        (0, vec![b"SET", b"large", big.as_bytes()]),
        (0, vec![b"RPUSH", b"l", b"a", b"b", b"c"]),
        (0, vec![b"SADD", b"st", b"1", b"2", b"three"]),
        (
            0,
            vec![
                b"ZADD",
                b"z",
                b"7.123456789",
                b"m1",
                b"-inf",
                b"m2",
                b"+inf",
                b"m3",
                b"1e-300",
                b"m4",
                b"-0.0",
                b"m5",
            ],
        ),
        (0, vec![b"HSET", b"h", b"f1", b"v1", b"f2", b"v2"]),
        (0, vec![b"XADD", b"x", b"1-1", b"f", b"v"]),
        (0, vec![b"XADD", b"x", b"2-1", b"f", b"w"]),
        (0, vec![b"XGROUP", b"CREATE", b"x", b"g1", b"0"]),
        (
            0,
            vec![
                b"XREADGROUP",
                b"GROUP",
                b"g1",
                b"c1",
                b"COUNT",
                b"1",
                b"STREAMS",
                b"x",
                b">",
            ],
        ),
        (0, vec![b"SET", b"ttl", b"v", b"EX", b"1000"]),
        (
            0,
            vec![b"RPUSH", b"big:list", b"i1", b"i2", b"i3", b"i4", b"i5"],
        ),
        (0, vec![b"SADD", b"big:set", b"a", b"b", b"c"]),
        (
            0,
            vec![
                b"ZADD",
                b"big:zset",
                b"7.123456789",
                b"a",
                b"-inf",
                b"b",
                b"+inf",
                b"c",
                b"1e-300",
                b"d",
                b"-0.0",
                b"e",
            ],
        ),
        (
            0,
            vec![
                b"HSET",
                b"big:hash",
                b"k1",
                b"v1",
                b"k2",
                b"v2",
                b"k3",
                b"v3",
            ],
        ),
        (0, vec![b"SET", b"big:str", b"part1-part2"]),
        (0, vec![b"PEXPIRE", b"big:list", b"900000"]),
        (0, vec![b"XADD", b"big:stream", b"5-0", b"a", b"1"]),
        (0, vec![b"XADD", b"big:stream", b"6-0", b"b", b"2"]),
        (0, vec![b"XADD", b"big:stream", b"7-0", b"c", b"3"]),
        (0, vec![b"XDEL", b"big:stream", b"7-0"]),
        (0, vec![b"XGROUP", b"CREATE", b"big:stream", b"grp", b"0"]),
        (
            0,
            vec![
                b"XREADGROUP",
                b"GROUP",
                b"grp",
                b"alice",
                b"COUNT",
                b"1",
                b"STREAMS",
                b"big:stream",
                b">",
            ],
        ),
        (1, vec![b"SET", b"unselected", b"1"]),
        (2, vec![b"SET", b"d2", b"in db 2"]),
        (2, vec![b"RPUSH", b"d2list", b"q"]),
    ];
    for (db, c) in &cmds {
        run(src, *db, c)?;
    }
    let mut events = vec![st.snapshot_begin(10, 20)];
    for (db, key) in [
        (0, "s"),
        (0, "n"),
        (0, "large"),
        (0, "l"),
        (0, "st"),
        (0, "z"),
        (0, "h"),
        (0, "x"),
        (0, "ttl"),
        (1, "unselected"),
        (2, "d2"),
        (2, "d2list"),
    ] {
        let rec = dump_record(src, db, key.as_bytes())?;
        events.push(st.key(rec));
    }
    let list_exp = sync_support::now_ms() + 900_000;
    use value_chunk::Items;
    let recs = vec![
        chunk(
            0,
            b"big:list",
            ValueType::List,
            0,
            false,
            Items::ListItems(BytesList {
                items: vec![b("i1"), b("i2"), b("i3")],
            }),
            list_exp,
        ),
        chunk(
            0,
            b"big:list",
            ValueType::List,
            1,
            true,
            Items::ListItems(BytesList {
                items: vec![b("i4"), b("i5")],
            }),
            list_exp,
        ),
        chunk(
            0,
            b"big:set",
            ValueType::Set,
            0,
            true,
            Items::SetMembers(BytesList {
                items: vec![b("a"), b("b"), b("c")],
            }),
            0,
        ),
        chunk(
            0,
            b"big:zset",
            ValueType::Zset,
            0,
            false,
            Items::ZsetMembers(ZSetMembers {
                members: vec![
                    ZSetMember {
                        member: b("a"),
                        score: 7.123456789,
                    },
                    ZSetMember {
                        member: b("b"),
                        score: f64::NEG_INFINITY,
                    },
                ],
            }),
            0,
        ),
        chunk(
            0,
            b"big:zset",
            ValueType::Zset,
            1,
            true,
            Items::ZsetMembers(ZSetMembers {
                members: vec![
                    ZSetMember {
                        member: b("c"),
                        score: f64::INFINITY,
                    },
                    ZSetMember {
                        member: b("d"),
                        score: 1e-300,
                    },
                    ZSetMember {
                        member: b("e"),
                        score: -0.0,
                    },
                ],
            }),
            0,
        ),
        chunk(
            0,
            b"big:hash",
            ValueType::Hash,
            0,
            true,
            Items::HashFields(HashFields {
                fields: ["k1", "k2", "k3"]
                    .iter()
                    .zip(["v1", "v2", "v3"])
                    .map(|(f, v)| HashField {
                        field: b(f),
                        value: b(v),
                        expire_at_ms: 0,
                    })
                    .collect(),
            }),
            0,
        ),
        chunk(
            0,
            b"big:str",
            ValueType::String,
            0,
            false,
            Items::StringPart(b("part1")),
            0,
        ),
        chunk(
            0,
            b"big:str",
            ValueType::String,
            1,
            true,
            Items::StringPart(b("-part2")),
            0,
        ),
        chunk(
            0,
            b"big:stream",
            ValueType::Stream,
            0,
            false,
            Items::Stream(StreamChunk {
                entries: vec![StreamEntry {
                    id: sid(5, 0),
                    fields: vec![b("a"), b("1")],
                }],
                meta: None,
                groups: vec![],
            }),
            0,
        ),
        chunk(
            0,
            b"big:stream",
            ValueType::Stream,
            1,
            true,
            Items::Stream(StreamChunk {
                entries: vec![StreamEntry {
                    id: sid(6, 0),
                    fields: vec![b("b"), b("2")],
                }],
                meta: Some(StreamMeta {
                    last_id: sid(7, 0),
                    length: 2,
                    entries_added: 3,
                    max_deleted_id: sid(7, 0),
                    first_id: sid(5, 0),
                }),
                groups: vec![StreamGroup {
                    name: b("grp"),
                    last_id: sid(5, 0),
                    // Unknown after the XDEL: the source reports it as nil.
                    entries_read: -1,
                    pending: vec![StreamPendingEntry {
                        id: sid(5, 0),
                        consumer: b("alice"),
                        delivery_time_ms: sync_support::now_ms(),
                        delivery_count: 1,
                    }],
                    consumers: vec![StreamConsumer {
                        name: b("alice"),
                        seen_time_ms: 0,
                        active_time_ms: 0,
                    }],
                }],
            }),
            0,
        ),
    ];
    for r in recs {
        events.push(st.key(r));
    }
    events.push(st.snapshot_end(20));
    Ok(events)
}

/// Runs each command on the source and returns it as an event.
fn both(
    src: &RedisServer,
    st: &mut Stream,
    db: u32,
    args: &[&[u8]],
    keys: &[u32],
) -> TestResult<ChangeEvent> {
    run(src, db, args)?;
    Ok(st.command(db, args, keys))
}

fn assert_same(src: &RedisServer, sdb: u32, dst: &Side<'_>, ddb: u32) -> TestResult {
    let d = differences(&Side::Server(src), sdb, dst, ddb, &|_| false)?;
    if d.is_empty() {
        Ok(())
    } else {
        Err(format!("db {sdb} -> {ddb} differs:\n{}", d.join("\n")).into())
    }
}

fn dbsize(s: &RedisServer, db: u32) -> TestResult<i64> {
    Ok(run(s, db, &[b"DBSIZE"])?.as_int().unwrap_or(-1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_copy_and_commands_standalone() -> TestResult {
    let src = RedisServer::start(RedisVersion::V7_0)?;
    let dst = RedisServer::start(RedisVersion::V7_0)?;
    let metrics = Metrics::new();
    let mut st = Stream::new("replid-a");
    let snapshot = populate(&src, &mut st)?;
    let opts = options(
        "t1",
        endpoint(&dst.addr(), false),
        ConflictMode::Intercept,
        &[0, 2],
        &[(2, 5)],
        &metrics,
    );
    let mut w = ShardWriter::open(opts).await?;
    assert!(w.applied().is_none());
    // In two batches, cut in the middle of the chunked list.
    let (first, second) = snapshot.split_at(14);
    let head = SubscribeResponse {
        shard_id: "standalone".into(),
        events: first.to_vec(),
        end_position: first.last().and_then(|e| e.position.clone()),
        received_offset: 0,
    };
    w.apply(&head).await?;
    w.apply(&st.batch("standalone", second.to_vec(), 0)).await?;
    let dst_side = Side::Server(&dst);
    assert_same(&src, 0, &dst_side, 0)?;
    assert_same(&src, 2, &dst_side, 5)?;
    assert_eq!(dbsize(&dst, 1)?, 0, "db 1 is not selected");
    assert_eq!(dbsize(&dst, 2)?, 0, "db 2 maps to 5");
    // Scores read back exactly as the source has them (also the chunked ones).
    for (key, member) in [
        (&b"big:zset"[..], &b"e"[..]),
        (b"big:zset", b"d"),
        (b"big:zset", b"a"),
        (b"z", b"m1"),
        (b"z", b"m4"),
    ] {
        let want = run(&src, 0, &[b"ZSCORE", key, member])?;
        assert_eq!(run(&dst, 0, &[b"ZSCORE", key, member])?, want);
    }

    // Incremental: a broad mix, run on the source and replayed.
    let later = sync_support::now_ms() + 600_000;
    let later = later.to_string();
    let mut ev = vec![both(&src, &mut st, 0, &[b"SET", b"a", b"1"], &[0])?];
    ev.push(both(&src, &mut st, 0, &[b"INCR", b"n"], &[0])?);
    ev.push(both(&src, &mut st, 0, &[b"APPEND", b"s", b" world"], &[0])?);
    ev.push(both(&src, &mut st, 0, &[b"LPUSH", b"l", b"z"], &[0])?);
    ev.push(both(&src, &mut st, 0, &[b"LSET", b"l", b"0", b"zz"], &[0])?);
    ev.push(both(
        &src,
        &mut st,
        0,
        &[b"HSET", b"h", b"f3", b"v3"],
        &[0],
    )?);
    ev.push(both(&src, &mut st, 0, &[b"SADD", b"st", b"q"], &[0])?);
    ev.push(both(
        &src,
        &mut st,
        0,
        &[b"ZADD", b"z", b"1.5", b"new"],
        &[0],
    )?);
    ev.push(both(
        &src,
        &mut st,
        0,
        &[b"ZINCRBY", b"z", b"2", b"new"],
        &[0],
    )?);
    ev.push(both(
        &src,
        &mut st,
        0,
        &[b"PEXPIREAT", b"s", later.as_bytes()],
        &[0],
    )?);
    ev.push(both(&src, &mut st, 0, &[b"DEL", b"a"], &[0])?);
    ev.push(both(&src, &mut st, 0, &[b"RENAME", b"l", b"l2"], &[0, 1])?);
    ev.push(both(
        &src,
        &mut st,
        0,
        &[b"XADD", b"x", b"9-1", b"f", b"new"],
        &[0],
    )?);
    ev.push(both(&src, &mut st, 1, &[b"SET", b"ignored", b"1"], &[0])?);
    ev.push(both(&src, &mut st, 2, &[b"SET", b"d2", b"changed"], &[0])?);
    // A MULTI/EXEC unit.
    run(&src, 0, &[b"INCR", b"n"])?;
    run(&src, 0, &[b"SET", b"tx", b"1"])?;
    ev.push(st.transaction(vec![
        command(0, &[b"INCR", b"n"], &[0]),
        command(0, &[b"SET", b"tx", b"1"], &[0]),
    ]));
    w.apply(&st.batch("standalone", ev, 14)).await?;
    assert_same(&src, 0, &dst_side, 0)?;
    assert_same(&src, 2, &dst_side, 5)?;

    // SWAPDB between two selected dbs, then FLUSHDB of the one now holding db 0's data.
    let mut ev = vec![both(&src, &mut st, 0, &[b"SWAPDB", b"0", b"2"], &[])?];
    ev.push(both(
        &src,
        &mut st,
        2,
        &[b"SET", b"after-swap", b"1"],
        &[0],
    )?);
    w.apply(&st.batch("standalone", ev, 0)).await?;
    assert_same(&src, 0, &dst_side, 0)?;
    assert_same(&src, 2, &dst_side, 5)?;
    let ck = run(&dst, 5, &[b"EXISTS", b"redis-sync:checkpoint:t1"])?;
    assert_eq!(
        ck.as_int(),
        Some(0),
        "the checkpoint does not travel with SWAPDB"
    );
    let ev = vec![
        both(&src, &mut st, 0, &[b"FLUSHDB"], &[])?,
        both(&src, &mut st, 0, &[b"SET", b"fresh", b"1"], &[0])?,
    ];
    w.apply(&st.batch("standalone", ev, 0)).await?;
    assert_same(&src, 0, &dst_side, 0)?;
    assert_same(&src, 2, &dst_side, 5)?;
    // The checkpoint survived the flush of its own db.
    let ck = run(
        &dst,
        0,
        &[b"HGET", b"redis-sync:checkpoint:t1", b"standalone"],
    )?;
    assert!(
        ck.as_str().is_some_and(|s| s.ends_with("|replid-a")),
        "{ck:?}"
    );
    assert!(
        metrics
            .render()
            .contains("redis_sync_apply_events_total{task=\"t1\",shard=\"standalone\"}")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_batches_apply_once() -> TestResult {
    let dst = RedisServer::start(RedisVersion::V7_0)?;
    let metrics = Metrics::new();
    let mut st = Stream::new("r");
    let begin = st.snapshot_begin(10, 0);
    let end = st.snapshot_end(0);
    let b0 = st.batch("standalone", vec![begin, end], 0);
    let mut batches = vec![b0];
    for _ in 0..3 {
        let ev = (0..10)
            .map(|_| st.command(0, &[b"INCR", b"counter"], &[0]))
            .collect::<Vec<_>>();
        batches.push(st.batch("standalone", ev, 7));
    }
    let opts = || {
        options(
            "t2",
            endpoint(&dst.addr(), false),
            ConflictMode::Intercept,
            &[],
            &[],
            &metrics,
        )
    };
    let mut w = ShardWriter::open(opts()).await?;
    w.apply(&batches[0]).await?;
    w.apply(&batches[1]).await?;
    // The same batch again (ingest re-sends after a lost acknowledgement).
    w.apply(&batches[1]).await?;
    drop(w);
    // A restart: a new writer reads the checkpoint and skips what it covers.
    let mut w = ShardWriter::open(opts()).await?;
    assert_eq!(w.applied(), batches[1].end_position);
    for b in &batches {
        w.apply(b).await?;
    }
    assert_eq!(run(&dst, 0, &[b"GET", b"counter"])?.as_str(), Some("30"));
    Ok(())
}

/// A restart inside a full copy: ingest announces the resume with a SnapshotBegin marked
/// `resumed`; the writer carries on without starting over, and refuses the resume when its
/// checkpoint is not inside that copy (starting over would leave the skipped keys out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_copy_carries_on_only_from_its_own_checkpoint() -> TestResult {
    let src = RedisServer::start(RedisVersion::V7_0)?;
    let dst = RedisServer::start(RedisVersion::V7_0)?;
    run(&src, 0, &[b"SET", b"first", b"1"])?;
    run(&src, 0, &[b"SET", b"second", b"2"])?;
    let metrics = Metrics::new();
    let opts = |task: &str| {
        options(
            task,
            endpoint(&dst.addr(), false),
            ConflictMode::Intercept,
            &[],
            &[],
            &metrics,
        )
    };
    let mut st = Stream::new("r");
    let begin = st.snapshot_begin(10, 2);
    let first = st.key(dump_record(&src, 0, b"first")?);
    let mut w = ShardWriter::open(opts("t-resume")).await?;
    w.apply(&st.batch("standalone", vec![begin.clone(), first], 0))
        .await?;
    drop(w);

    let resumed = |mut e: ChangeEvent| {
        if let Some(change_event::Kind::SnapshotBegin(b)) = &mut e.kind {
            b.resumed = true;
            b.resumed_keys = 1;
        }
        if let Some(p) = &mut e.position {
            p.snapshot_records = 1;
        }
        e
    };
    let second = st.key(dump_record(&src, 0, b"second")?);
    let end = st.snapshot_end(0);
    let rest = st.batch("standalone", vec![resumed(begin.clone()), second, end], 0);
    let mut w = ShardWriter::open(opts("t-resume")).await?;
    let report = w.apply(&rest).await?;
    assert_eq!(report.keys_done, 1);
    assert_eq!(run(&dst, 0, &[b"GET", b"first"])?.as_str(), Some("1"));
    assert_eq!(run(&dst, 0, &[b"GET", b"second"])?.as_str(), Some("2"));

    // Another task on the same destination has no checkpoint in that copy.
    let mut w = ShardWriter::open(opts("t-other")).await?;
    let err = w
        .apply(&rest)
        .await
        .expect_err("a resume without a checkpoint");
    assert!(err.to_string().contains("in the middle"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expired_on_the_destination_do_not_fail_the_task() -> TestResult {
    let dst = RedisServer::start(RedisVersion::V7_0)?;
    let metrics = Metrics::new();
    let mut st = Stream::new("r");
    let exp = sync_support::now_ms() + 300;
    let mut ev = vec![st.snapshot_begin(10, 2)];
    use value_chunk::Items;
    ev.push(st.key(chunk(
        0,
        b"lst",
        ValueType::List,
        0,
        true,
        Items::ListItems(BytesList {
            items: vec![b("a"), b("b")],
        }),
        exp,
    )));
    ev.push(st.key(chunk(
        0,
        b"ctr",
        ValueType::String,
        0,
        true,
        Items::StringPart(b("5")),
        exp,
    )));
    ev.push(st.snapshot_end(2));
    let mut w = ShardWriter::open(options(
        "t3",
        endpoint(&dst.addr(), false),
        ConflictMode::Intercept,
        &[],
        &[],
        &metrics,
    ))
    .await?;
    w.apply(&st.batch("standalone", ev, 0)).await?;
    eventually(
        "the destination to expire the keys",
        Duration::from_secs(5),
        || match run(&dst, 0, &[b"EXISTS", b"lst", b"ctr"])
            .map_err(|e| e.to_string())?
            .as_int()
        {
            Some(0) => Ok(()),
            other => Err(format!("EXISTS = {other:?}")),
        },
    )
    .await?;
    // Writes the source made before its own expiry, replayed late, then the source's DELs.
    let ev = vec![
        st.command(0, &[b"LSET", b"lst", b"1", b"x"], &[0]),
        st.command(0, &[b"RPUSH", b"lst", b"c"], &[0]),
        st.command(0, &[b"LSET", b"lst", b"1", b"y"], &[0]),
        st.command(0, &[b"INCR", b"ctr"], &[0]),
        st.command(0, &[b"RENAME", b"ctr", b"ctr2"], &[0, 1]),
        st.command(0, &[b"XGROUP", b"SETID", b"gone", b"g", b"0"], &[0]),
        st.command(0, &[b"DEL", b"lst"], &[0]),
        st.command(0, &[b"DEL", b"ctr"], &[0]),
        st.command(0, &[b"DEL", b"ctr2"], &[0]),
    ];
    let report = w.apply(&st.batch("standalone", ev, 0)).await?;
    assert_eq!(report.missing_key_replies, 3, "{report:?}");
    assert!(
        metrics
            .render()
            .contains("redis_sync_apply_missing_key_replies_total{task=\"t3\"} 3"),
        "{}",
        metrics.render()
    );
    assert_eq!(dbsize(&dst, 0)?, 1, "only the checkpoint remains");
    // A real error still fails, naming the command, key and db.
    run(&dst, 0, &[b"SET", b"str", b"v"])?;
    let ev = vec![st.command(0, &[b"LPUSH", b"str", b"x"], &[0])];
    let err = w.apply(&st.batch("standalone", ev, 0)).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, WriteError::Rejected { .. }), "{text}");
    assert!(
        text.contains("LPUSH")
            && text.contains("\"str\"")
            && text.contains("db 0")
            && text.contains("WRONGTYPE"),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_replaces_whole_keys_and_intercept_refuses() -> TestResult {
    let src = RedisServer::start(RedisVersion::V7_0)?;
    let dst = RedisServer::start(RedisVersion::V7_0)?;
    let metrics = Metrics::new();
    for c in [
        &[&b"RPUSH"[..], b"l", b"1", b"2"][..],
        &[b"SADD", b"s", b"a", b"b"],
        &[b"XADD", b"x", b"1-1", b"f", b"v"],
        &[b"RPUSH", b"big", b"p", b"q"],
    ] {
        run(&src, 0, c)?;
        run(&dst, 0, c)?;
    }
    run(&dst, 0, &[b"RPUSH", b"l", b"extra"])?;
    let mut st = Stream::new("r");
    let mut ev = vec![st.snapshot_begin(10, 4)];
    for k in ["l", "s", "x"] {
        ev.push(st.key(dump_record(&src, 0, k.as_bytes())?));
    }
    ev.push(st.key(chunk(
        0,
        b"big",
        ValueType::List,
        0,
        true,
        value_chunk::Items::ListItems(BytesList {
            items: vec![b("p"), b("q")],
        }),
        0,
    )));
    ev.push(st.snapshot_end(4));
    let batch = st.batch("standalone", ev, 0);

    let mut w = ShardWriter::open(options(
        "t4",
        endpoint(&dst.addr(), false),
        ConflictMode::Intercept,
        &[],
        &[],
        &metrics,
    ))
    .await?;
    let err = w.apply(&batch).await.unwrap_err().to_string();
    assert!(
        err.contains("RESTORE") && err.contains("BUSYKEY") && err.contains("\"l\""),
        "{err}"
    );

    // Another task: the refused MULTI above still committed its other writes and its
    // checkpoint (Redis has no rollback), so t4 itself would skip this batch now.
    let mut w = ShardWriter::open(options(
        "t4b",
        endpoint(&dst.addr(), false),
        ConflictMode::Overwrite,
        &[],
        &[],
        &metrics,
    ))
    .await?;
    w.apply(&batch).await?;
    assert_same(&src, 0, &Side::Server(&dst), 0)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_history_under_intercept_flushes_first() -> TestResult {
    let dst = RedisServer::start(RedisVersion::V7_0)?;
    let metrics = Metrics::new();
    let opts = || {
        options(
            "t5",
            endpoint(&dst.addr(), false),
            ConflictMode::Intercept,
            &[0, 3],
            &[],
            &metrics,
        )
    };
    let mut st = Stream::new("old");
    let str_rec = |db: u32, k: &str| {
        chunk(
            db,
            k.as_bytes(),
            ValueType::String,
            0,
            true,
            value_chunk::Items::StringPart(b("v")),
            0,
        )
    };
    let ev = vec![
        st.snapshot_begin(10, 2),
        st.key(str_rec(0, "a")),
        st.key(str_rec(3, "b")),
        st.snapshot_end(2),
    ];
    let mut w = ShardWriter::open(opts()).await?;
    w.apply(&st.batch("standalone", ev, 0)).await?;
    run(&dst, 1, &[b"SET", b"not-ours", b"1"])?;
    drop(w);
    // Ingest lost the position: a new full copy of another history.
    let mut st2 = Stream::new("new");
    st2.offset = 5;
    let ev = vec![
        st2.snapshot_begin(10, 1),
        st2.key(str_rec(0, "c")),
        st2.snapshot_end(1),
    ];
    let mut w = ShardWriter::open(opts()).await?;
    w.apply(&st2.batch("standalone", ev, 0)).await?;
    assert_eq!(run(&dst, 0, &[b"EXISTS", b"a"])?.as_int(), Some(0));
    assert_eq!(run(&dst, 3, &[b"EXISTS", b"b"])?.as_int(), Some(0));
    assert_eq!(run(&dst, 0, &[b"EXISTS", b"c"])?.as_int(), Some(1));
    assert_eq!(
        run(&dst, 1, &[b"EXISTS", b"not-ours"])?.as_int(),
        Some(1),
        "db 1 is not the task's"
    );
    assert_eq!(w.applied().map(|p| p.replid), Some("new".to_owned()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evalsha_gets_its_script_loaded() -> TestResult {
    let dst = RedisServer::start(RedisVersion::V7_0)?;
    let metrics = Metrics::new();
    let body = b"return redis.call('INCRBY', KEYS[1], ARGV[1])";
    let sha = {
        let s = RedisServer::start(RedisVersion::V7_0)?;
        s.command(&[b"SCRIPT", b"LOAD", body])?
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let mut st = Stream::new("r");
    let begin = vec![st.snapshot_begin(10, 0), st.snapshot_end(0)];
    let mut w = ShardWriter::open(options(
        "t6",
        endpoint(&dst.addr(), false),
        ConflictMode::Intercept,
        &[],
        &[],
        &metrics,
    ))
    .await?;
    w.apply(&st.batch("standalone", begin, 0)).await?;
    let mut c = command(0, &[b"EVALSHA", sha.as_bytes(), b"1", b"k", b"5"], &[2]);
    c.script_body = body.to_vec();
    let ev = vec![
        ChangeEvent {
            position: st.command(0, &[b"PING"], &[]).position,
            kind: Some(change_event::Kind::Command(c.clone())),
        },
        ChangeEvent {
            position: st.command(0, &[b"PING"], &[]).position,
            kind: Some(change_event::Kind::Command(c)),
        },
    ];
    w.apply(&st.batch("standalone", ev, 0)).await?;
    assert_eq!(run(&dst, 0, &[b"GET", b"k"])?.as_str(), Some("10"));
    // Without a body, an unknown script is a clear failure, before anything is applied.
    let unknown = "0123456789012345678901234567890123456789";
    let ev = vec![st.command(0, &[b"EVALSHA", unknown.as_bytes(), b"0"], &[])];
    let err = w
        .apply(&st.batch("standalone", ev, 0))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("NOSCRIPT") && err.contains(unknown), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_destination_routes_splits_and_checkpoints_per_master() -> TestResult {
    let src = RedisServer::start(RedisVersion::V7_0)?;
    let cluster = RedisCluster::start(RedisVersion::V7_0, 3, 0)?;
    let metrics = Metrics::new();
    let seed = cluster.masters()[0].server().addr();
    let opts = || {
        options(
            "t7",
            endpoint(&seed, true),
            ConflictMode::Intercept,
            &[0],
            &[],
            &metrics,
        )
    };
    let mut st = Stream::new("r");
    let mut ev = vec![st.snapshot_begin(10, 30)];
    for i in 0..30 {
        let k = format!("key:{i}");
        run(&src, 0, &[b"SET", k.as_bytes(), b"v"])?;
        ev.push(st.key(dump_record(&src, 0, k.as_bytes())?));
    }
    run(&src, 0, &[b"SET", b"other-db", b"v"])?;
    ev.push(st.key(KeyRecord {
        db: 4,
        ..dump_record(&src, 0, b"other-db")?
    }));
    run(&src, 0, &[b"DEL", b"other-db"])?;
    ev.push(st.snapshot_end(31));
    let mut w = ShardWriter::open(opts()).await?;
    w.apply(&st.batch("standalone", ev, 0)).await?;
    // Multi-key commands across slots: MSET and DEL split per slot, RENAME refused.
    let ev = vec![
        both(
            &src,
            &mut st,
            0,
            &[b"MSET", b"a", b"1", b"b", b"2", b"c", b"3", b"{a}x", b"4"],
            &[0, 2, 4, 6],
        )?,
        both(
            &src,
            &mut st,
            0,
            &[b"DEL", b"key:1", b"key:2", b"key:3", b"key:4"],
            &[0, 1, 2, 3],
        )?,
        both(&src, &mut st, 0, &[b"INCR", b"ctr:{a}"], &[0])?,
        both(&src, &mut st, 0, &[b"RENAME", b"{a}x", b"{a}y"], &[0, 1])?,
    ];
    w.apply(&st.batch("standalone", ev, 0)).await?;
    let d = differences(&Side::Server(&src), 0, &Side::Cluster(&cluster), 0, &|_| {
        false
    })?;
    assert!(d.is_empty(), "{}", d.join("\n"));
    // One global checkpoint, and one per slot written to, each in its own slot.
    let mut globals = 0;
    for m in cluster.masters() {
        let keys = m.server().cmd_ok(&["KEYS", "redis-sync:checkpoint:*"])?;
        for k in keys.as_array().unwrap_or_default() {
            let k = k.as_str().unwrap_or_default();
            if k == "redis-sync:checkpoint:t7" {
                globals += 1;
            } else {
                assert!(
                    k.starts_with("redis-sync:checkpoint:{") && k.ends_with("}:t7"),
                    "{k}"
                );
            }
        }
    }
    assert_eq!(globals, 1);
    let slot_key = |key: &[u8]| {
        let tag = redis_sync_apply::router::slot_tag(redis_sync_apply::router::key_slot(key));
        format!("redis-sync:checkpoint:{{{tag}}}:t7")
    };
    assert_eq!(
        cluster
            .node_for_key(b"a")
            .server()
            .cmd_ok(&["EXISTS", &slot_key(b"a")])?
            .as_int(),
        Some(1)
    );
    let ev = vec![st.command(0, &[b"RENAME", b"a", b"b"], &[0, 1])];
    let err = w
        .apply(&st.batch("standalone", ev, 0))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("RENAME") && err.contains("different slots"),
        "{err}"
    );
    drop(w);

    // A crash where one master missed the last MULTI: roll it back by hand, restart, and
    // replay the last batch; each master applies it exactly once.
    let mut w = ShardWriter::open(opts()).await?;
    let before = w.applied();
    // One key per master.
    let keys: Vec<String> = cluster
        .masters()
        .iter()
        .map(|m| {
            (0..100_000)
                .map(|n| format!("once:{{{n}}}"))
                .find(|k| cluster.node_for_key(k.as_bytes()).server().addr() == m.server().addr())
                .unwrap_or_default()
        })
        .collect();
    let ev: Vec<ChangeEvent> = keys
        .iter()
        .map(|k| st.command(0, &[b"INCR", k.as_bytes()], &[0]))
        .collect();
    let batch = st.batch("standalone", ev, 0);
    w.apply(&batch).await?;
    drop(w);
    // The crash: the slot MULTI of keys[0] and the global checkpoint never made it.
    let victim = cluster.node_for_key(keys[0].as_bytes()).server();
    victim.cmd_ok(&["DECR", &keys[0]])?;
    victim.cmd_ok(&["DEL", &slot_key(keys[0].as_bytes())])?;
    let global = cluster.node_for_key(b"redis-sync:checkpoint:t7").server();
    let cur = global
        .cmd_ok(&["HGET", "redis-sync:checkpoint:t7", "standalone"])?
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let seq: u64 = cur.split('|').nth(1).ok_or("no seq")?.parse()?;
    let before_pos = before.clone().ok_or("no position before")?;
    let rolled = format!(
        "1|{}|{}|0|0|0|0|0|{}",
        seq - 1,
        before_pos.offset,
        before_pos.replid
    );
    global.cmd_ok(&["HSET", "redis-sync:checkpoint:t7", "standalone", &rolled])?;
    let mut w = ShardWriter::open(opts()).await?;
    assert_eq!(w.applied(), Some(before.clone()).flatten());
    w.apply(&batch).await?;
    for k in &keys {
        let v = cluster
            .node_for_key(k.as_bytes())
            .server()
            .cmd_ok(&["GET", k])?;
        assert_eq!(v.as_str(), Some("1"), "{k}");
    }
    Ok(())
}
