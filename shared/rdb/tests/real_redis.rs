//! Against real `redis-server`s of every supported version (2.8 to 7.0, RDB 6 to 10): the
//! RDB each saves parses; every whole key's `dump_body` is byte for byte what `DUMP`
//! returns without its trailer, and `RESTORE` takes it back once framed; every key, whole
//! or chunked, holds what the server says it holds, zset scores to the bit.

mod support;

use std::collections::BTreeMap;

use bytes::Bytes;
use redis_sync_rdb::{Item, ParserOptions, Value, dump, types as t};
use redis_sync_testkit::{RedisServer, RedisVersion, Reply};
use support::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn ok(server: &RedisServer, args: &[&[u8]]) -> Result<Reply, Box<dyn std::error::Error>> {
    match server.command(args)? {
        Reply::Error(e) => Err(format!("{:?}: {e}", String::from_utf8_lossy(args[0])).into()),
        r => Ok(r),
    }
}

/// Runs `cmd key member...` in batches of 10 000 members.
fn push_all(server: &RedisServer, cmd: &str, key: &str, members: &[Vec<u8>]) -> TestResult {
    for batch in members.chunks(10_000) {
        let mut args: Vec<&[u8]> = vec![cmd.as_bytes(), key.as_bytes()];
        args.extend(batch.iter().map(|m| m.as_slice()));
        ok(server, &args)?;
    }
    Ok(())
}

/// Threshold for these tests: small enough that modest keys are chunked.
const THRESHOLD: u64 = 128 * 1024;

/// Writes keys of every type in small (compact) and big (hash table, chunked) forms,
/// using only commands the server's version has.
fn populate(server: &RedisServer, version: RedisVersion) -> TestResult {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let s = |a: &[&str]| -> Result<Reply, Box<dyn std::error::Error>> {
        let args: Vec<&[u8]> = a.iter().map(|x| x.as_bytes()).collect();
        ok(server, &args)
    };
    s(&["SET", "str", "hello"])?;
    s(&["SET", "int", "12345"])?;
    s(&["SET", "neg", "-99999999999"])?;
    s(&["SET", "expiring", "v"])?;
    s(&["PEXPIREAT", "expiring", "4102444800123"])?;
    let random: Vec<u8> = (0..600_000).map(|_| rng.next() as u8).collect();
    ok(server, &[b"SET", b"big_random", &random])?;
    ok(
        server,
        &[b"SET", b"big_compressible", &vec![b'a'; 3_000_000]],
    )?;
    s(&["SET", "mid_compressible", &"xyz".repeat(1000)])?;

    s(&["RPUSH", "list_small", "a", "1", "-5", "bb", "123456789012"])?;
    let items: Vec<Vec<u8>> = (0..30_000)
        .map(|i| format!("item-{i}-{}", rng.next() % 1000).into_bytes())
        .collect();
    push_all(server, "RPUSH", "list_big", &items)?;
    ok(
        server,
        &[b"RPUSH", b"list_plain", &vec![b'p'; 20_000], b"after"],
    )?;

    s(&["SADD", "set_ints", "1", "2", "300", "-70000", "5000000000"])?;
    s(&["SADD", "set_lp", "a", "b", "c", "1"])?;
    let members: Vec<Vec<u8>> = (0..300).map(|i| format!("m{i}").into_bytes()).collect();
    push_all(server, "SADD", "set_ht", &members)?;
    let members: Vec<Vec<u8>> = (0..20_000)
        .map(|i| format!("member:{i:08}").into_bytes())
        .collect();
    push_all(server, "SADD", "set_big", &members)?;

    s(&[
        "ZADD",
        "zset_lp",
        "7.123456789",
        "a",
        "-inf",
        "b",
        "+inf",
        "c",
        "1e-300",
        "d",
        "-0",
        "e",
        "0.30000000000000004",
        "f",
    ])?;
    let mut zargs: Vec<Vec<u8>> = Vec::new();
    for i in 0..20_000u64 {
        let score = (rng.next() % 1_000_000_000) as f64 / 7.0;
        zargs.push(format!("{score:?}").into_bytes());
        zargs.push(format!("z{i}").into_bytes());
    }
    push_all(server, "ZADD", "zset_big", &zargs)?;

    s(&["HMSET", "hash_lp", "f1", "v1", "f2", "2", "f3", ""])?;
    let mut hargs: Vec<Vec<u8>> = Vec::new();
    for i in 0..10_000 {
        hargs.push(format!("field{i}").into_bytes());
        hargs.push(format!("value{}", rng.next()).into_bytes());
    }
    push_all(server, "HMSET", "hash_big", &hargs)?;
    if version < RedisVersion::V5_0 {
        return Ok(());
    }

    // 5 000 entries of about 60 bytes in two field layouts, pipelined.
    let mut client = server.client()?;
    for i in 0..5_000 {
        // Random text: stream nodes are LZF-compressed in the RDB.
        let v = format!(
            "{i}:{:016x}{:016x}{:016x}",
            rng.next(),
            rng.next(),
            rng.next()
        );
        if i % 3 == 0 {
            client.send(&[b"XADD", b"stream", b"*", b"a", v.as_bytes(), b"b", b"x"])?;
        } else {
            client.send(&[b"XADD", b"stream", b"*", b"other", v.as_bytes()])?;
        }
    }
    for _ in 0..5_000 {
        if let Reply::Error(e) = client.read_reply()? {
            return Err(e.into());
        }
    }
    s(&["XADD", "stream_small", "1-1", "k", "v"])?;
    s(&["XADD", "stream_small", "2-5", "k", "w", "k2", "w2"])?;
    s(&["XADD", "stream_small", "3-0", "k", "x"])?;
    s(&["XDEL", "stream_small", "2-5"])?;
    s(&["XGROUP", "CREATE", "stream_small", "g1", "0"])?;
    s(&["XGROUP", "CREATE", "stream_small", "g2", "$"])?;
    s(&[
        "XREADGROUP",
        "GROUP",
        "g1",
        "alice",
        "COUNT",
        "1",
        "STREAMS",
        "stream_small",
        ">",
    ])?;
    s(&[
        "XREADGROUP",
        "GROUP",
        "g1",
        "bob",
        "COUNT",
        "1",
        "STREAMS",
        "stream_small",
        ">",
    ])?;
    s(&["XGROUP", "CREATE", "stream", "readers", "0"])?;
    s(&[
        "XREADGROUP",
        "GROUP",
        "readers",
        "carol",
        "COUNT",
        "10",
        "STREAMS",
        "stream",
        ">",
    ])?;
    Ok(())
}

fn bulk(r: &Reply) -> Bytes {
    Bytes::copy_from_slice(r.as_bytes().unwrap_or_default())
}

fn array(r: Reply) -> Vec<Reply> {
    r.as_array().map(|a| a.to_vec()).unwrap_or_default()
}

/// The key's value as the server reports it, in the parser's typed form (sets and hashes
/// sorted, zsets sorted by member).
fn server_value(server: &RedisServer, key: &[u8]) -> Result<Value, Box<dyn std::error::Error>> {
    let ty = ok(server, &[b"TYPE", key])?;
    Ok(match ty.as_str().unwrap_or_default() {
        "string" => Value::String(bulk(&ok(server, &[b"GET", key])?)),
        "list" => Value::List(
            array(ok(server, &[b"LRANGE", key, b"0", b"-1"])?)
                .iter()
                .map(bulk)
                .collect(),
        ),
        "set" => {
            let mut v: Vec<Bytes> = array(ok(server, &[b"SMEMBERS", key])?)
                .iter()
                .map(bulk)
                .collect();
            v.sort();
            Value::Set(v)
        }
        "zset" => {
            let flat = array(ok(server, &[b"ZRANGE", key, b"0", b"-1", b"WITHSCORES"])?);
            let mut v: Vec<(Bytes, f64)> = flat
                .chunks(2)
                .map(|p| {
                    let text = String::from_utf8_lossy(&bulk(&p[1])).into_owned();
                    (bulk(&p[0]), text.parse::<f64>().unwrap_or(f64::NAN))
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            Value::ZSet(v)
        }
        "hash" => {
            let flat = array(ok(server, &[b"HGETALL", key])?);
            let mut v: Vec<redis_sync_rdb::HashField> = flat
                .chunks(2)
                .map(|p| redis_sync_rdb::HashField {
                    field: bulk(&p[0]),
                    value: bulk(&p[1]),
                    expire_at_ms: None,
                })
                .collect();
            v.sort_by(|a, b| a.field.cmp(&b.field));
            Value::Hash(v)
        }
        other => return Err(format!("unexpected type {other}").into()),
    })
}

fn normalise(v: &Value) -> Value {
    match v {
        Value::Set(s) => {
            let mut s = s.clone();
            s.sort();
            Value::Set(s)
        }
        Value::ZSet(z) => {
            let mut z = z.clone();
            z.sort_by(|a, b| a.0.cmp(&b.0));
            Value::ZSet(z)
        }
        Value::Hash(h) => {
            let mut h = h.clone();
            h.sort_by(|a, b| a.field.cmp(&b.field));
            Value::Hash(h)
        }
        other => other.clone(),
    }
}

fn zset_bits(v: &Value) -> Vec<(Bytes, u64)> {
    match v {
        Value::ZSet(z) => z.iter().map(|(m, s)| (m.clone(), s.to_bits())).collect(),
        _ => Vec::new(),
    }
}

fn check(version: RedisVersion) -> TestResult {
    let server = RedisServer::start(version)?;
    populate(&server, version)?;
    ok(&server, &[b"SAVE"])?;
    let data = std::fs::read(server.rdb_path())?;

    let opts = ParserOptions {
        chunk_threshold_bytes: THRESHOLD,
        ..ParserOptions::default()
    };
    let (items, end) = parse_pieces(&data, &[4096, 1, 65_536, 17], opts);
    end?;
    let Some(Item::Header {
        version: rdb_version,
        ..
    }) = items.first()
    else {
        return Err("no header".into());
    };
    assert_eq!(*rdb_version, version.rdb_version());
    let dump_version = u16::try_from(*rdb_version)?;
    assert!(matches!(items.last(), Some(Item::End { checksum: Some(c) }) if *c != 0));
    let streams = version >= RedisVersion::V5_0;

    // Whole keys: the dump body is what DUMP says, and RESTORE accepts it.
    let whole = keys(&items);
    assert_eq!(whole.len(), if streams { 14 } else { 13 }, "whole keys");
    for k in &whole {
        let payload = ok(&server, &[b"DUMP", &k.key])?;
        let payload = payload.as_bytes().ok_or("DUMP returned nil")?;
        let (ver, body) = dump::unframe(payload)?;
        assert_eq!(ver, dump_version);
        assert_eq!(body, &k.dump_body[..], "{:?}", k.key);
        let framed = dump::frame(&k.dump_body, dump_version);
        let copy = [b"copy:".as_slice(), &k.key].concat();
        ok(&server, &[b"RESTORE", &copy, b"0", &framed])?;
        // A compact encoding comes back byte for byte; a hash table is rebuilt by RESTORE
        // and iterates in another order, so only its contents can be compared.
        if matches!(k.rdb_type, t::SET | t::HASH | t::ZSET | t::ZSET_2 | t::LIST) {
            assert_eq!(
                server_value(&server, &copy)?,
                server_value(&server, &k.key)?
            );
        } else {
            let again = ok(&server, &[b"DUMP", &copy])?;
            assert_eq!(again.as_bytes(), Some(payload), "{:?}", k.key);
        }
        ok(&server, &[b"DEL", &copy])?;
    }
    let expiring = key(&items, "expiring");
    assert_eq!(expiring.expire_at_ms, Some(4_102_444_800_123));

    // Every key, whole or put back together from chunks, is what the server holds.
    let all = assembled(&items, 10_000);
    let by_name: BTreeMap<Vec<u8>, Value> = all.into_iter().map(|(_, k, _, v)| (k, v)).collect();
    for (name, value) in &by_name {
        if let Value::Stream(s) = value {
            let xlen = ok(&server, &[b"XLEN", name])?.as_int().ok_or("XLEN")?;
            assert_eq!(s.entries.len() as i64, xlen);
            let meta = s.meta.ok_or("meta")?;
            assert_eq!(meta.length as i64, xlen);
            continue;
        }
        let expected = server_value(&server, name)?;
        assert_eq!(
            normalise(value),
            expected,
            "{:?}",
            String::from_utf8_lossy(name)
        );
        assert_eq!(zset_bits(&normalise(value)), zset_bits(&expected));
    }
    for big in [
        "big_random",
        "list_big",
        "set_big",
        "zset_big",
        "hash_big",
        "stream",
    ] {
        if big == "stream" && !streams {
            continue;
        }
        assert!(
            items
                .iter()
                .any(|i| matches!(i, Item::Chunk(c) if c.key.as_ref() == big.as_bytes())),
            "{big} was chunked"
        );
    }

    if !streams {
        return Ok(());
    }
    let Value::Stream(s) = &by_name[&b"stream_small".to_vec()] else {
        return Err("stream_small".into());
    };
    assert_eq!(s.entries.len(), 2);
    let meta = s.meta.ok_or("meta")?;
    if version >= RedisVersion::V7_0 {
        assert_eq!(meta.entries_added, 3);
        assert_eq!(meta.max_deleted_id.to_string(), "2-5");
    } else {
        // Type 15 stores neither; they are derived as Redis derives them on load.
        assert_eq!(meta.entries_added, 2);
        assert_eq!(meta.max_deleted_id.to_string(), "0-0");
        assert!(s.groups.iter().all(|g| g.entries_read.is_none()));
    }
    assert_eq!(meta.first_id.to_string(), "1-1");
    assert_eq!(s.groups.len(), 2);
    let g1 = s.groups.iter().find(|g| g.name == "g1").ok_or("g1")?;
    assert_eq!(g1.pending.len(), 2);
    assert_eq!(g1.pending[0].consumer.as_deref(), Some(&b"alice"[..]));
    assert_eq!(g1.pending[1].consumer.as_deref(), Some(&b"bob"[..]));
    assert_eq!(g1.consumers.len(), 2);
    Ok(())
}

#[test]
fn redis_2_8() -> TestResult {
    check(RedisVersion::V2_8)
}

#[test]
fn redis_3_2() -> TestResult {
    check(RedisVersion::V3_2)
}

#[test]
fn redis_5_0() -> TestResult {
    check(RedisVersion::V5_0)
}

#[test]
fn redis_6_0() -> TestResult {
    check(RedisVersion::V6_0)
}

#[test]
fn redis_6_2() -> TestResult {
    check(RedisVersion::V6_2)
}

#[test]
fn redis_7_0() -> TestResult {
    check(RedisVersion::V7_0)
}
