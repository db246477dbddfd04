//! Parse throughput on a synthetic snapshot.
//!
//! Generates a 1M-key RDB in memory (strings; small hashes, lists, sets and sorted sets in
//! both their compact encodings and their hash-table encodings), then feeds it to the
//! parser in 64 KiB pieces, as a socket would deliver it, and reports MB/s and keys/s.
//!
//! `cargo run --release -p redis-sync-rdb --example parse_bench [-- KEYS]`

#[path = "../tests/support/writer.rs"]
mod writer;

use std::time::Instant;

use redis_sync_rdb::{Item, ParserOptions, RdbParser, types as t};
use writer::{El, RdbWriter, body, intset, listpack, ziplist};

/// Deterministic pseudo-random numbers (xorshift), so every run parses the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn generate(keys: u64) -> Vec<u8> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut w = RdbWriter::new(11);
    w.aux(b"redis-ver", b"7.2.4")
        .aux(b"redis-bits", b"64")
        .select_db(0)
        .resize_db(keys, keys / 10);
    let filler = vec![b'x'; 256];
    for i in 0..keys {
        let key = format!("key:{i:08}");
        if i % 10 == 0 {
            w.expire_ms(1_900_000_000_000 + i as i64);
        }
        let small = |rng: &mut Rng, n: u64| -> Vec<Vec<u8>> {
            (0..n)
                .map(|j| format!("v{j}:{}", rng.below(1_000_000)).into_bytes())
                .collect()
        };
        match i % 20 {
            // 40 %: strings of 16..256 bytes.
            0..=7 => {
                let len = 16 + rng.below(240) as usize;
                w.string(key.as_bytes(), &filler[..len]);
            }
            // hash listpack, 8 fields
            8 | 9 => {
                let vals = small(&mut rng, 8);
                let mut els = Vec::new();
                for (j, v) in vals.iter().enumerate() {
                    els.push(El::Int(j as i64));
                    els.push(El::Str(v));
                }
                w.key(
                    t::HASH_LISTPACK,
                    key.as_bytes(),
                    &body::blob(&listpack(&els)),
                );
            }
            // hash hashtable, 8 fields
            10 => {
                let vals = small(&mut rng, 8);
                let fields: Vec<(&[u8], &[u8])> =
                    vals.iter().map(|v| (&v[..2], v.as_slice())).collect();
                w.key(t::HASH, key.as_bytes(), &body::hash(&fields));
            }
            // list quicklist2 with one listpack node of 10 items
            11 | 12 => {
                let vals = small(&mut rng, 10);
                let els: Vec<El<'_>> = vals.iter().map(|v| El::Str(v)).collect();
                w.key(
                    t::LIST_QUICKLIST_2,
                    key.as_bytes(),
                    &body::quicklist2(&[listpack(&els)]),
                );
            }
            // list ziplist (RDB < 7 layout, still loadable)
            13 => {
                let vals = small(&mut rng, 10);
                let els: Vec<El<'_>> = vals.iter().map(|v| El::Str(v)).collect();
                w.key(t::LIST_ZIPLIST, key.as_bytes(), &body::blob(&ziplist(&els)));
            }
            // set intset / set listpack / set hashtable
            14 => {
                let base = rng.below(1_000_000) as i64;
                let members: Vec<i64> = (0..16).map(|j| base + j * 3).collect();
                w.key(
                    t::SET_INTSET,
                    key.as_bytes(),
                    &body::blob(&intset(&members)),
                );
            }
            15 => {
                let vals = small(&mut rng, 8);
                let els: Vec<El<'_>> = vals.iter().map(|v| El::Str(v)).collect();
                w.key(
                    t::SET_LISTPACK,
                    key.as_bytes(),
                    &body::blob(&listpack(&els)),
                );
            }
            16 => {
                let vals = small(&mut rng, 8);
                let members: Vec<&[u8]> = vals.iter().map(|v| v.as_slice()).collect();
                w.key(t::SET, key.as_bytes(), &body::set(&members));
            }
            // zset listpack / zset skiplist (binary scores) / zset ziplist
            17 | 18 => {
                let vals = small(&mut rng, 8);
                let scores: Vec<String> = (0..8)
                    .map(|_| format!("{}", rng.below(10_000) as f64 / 7.0))
                    .collect();
                let mut els = Vec::new();
                for (v, s) in vals.iter().zip(&scores) {
                    els.push(El::Str(v));
                    els.push(El::Str(s.as_bytes()));
                }
                let ty = if i % 20 == 17 {
                    t::ZSET_LISTPACK
                } else {
                    t::ZSET_ZIPLIST
                };
                let blob = if ty == t::ZSET_LISTPACK {
                    listpack(&els)
                } else {
                    ziplist(&els)
                };
                w.key(ty, key.as_bytes(), &body::blob(&blob));
            }
            _ => {
                let vals = small(&mut rng, 8);
                let members: Vec<(&[u8], f64)> = vals
                    .iter()
                    .map(|v| (v.as_slice(), rng.below(1 << 40) as f64 / 3.0))
                    .collect();
                w.key(t::ZSET_2, key.as_bytes(), &body::zset2(&members));
            }
        }
    }
    w.finish()
}

/// CPU time of this thread in seconds (Linux), so that a busy machine does not distort the
/// figures as much as wall-clock time does.
fn thread_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

fn main() {
    let keys: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let t0 = Instant::now();
    let rdb = generate(keys);
    println!(
        "generated {keys} keys, {:.1} MB in {:.2?}",
        rdb.len() as f64 / 1e6,
        t0.elapsed()
    );

    for (label, verify) in [("with CRC check", true), ("without CRC check", false)] {
        let opts = ParserOptions {
            verify_checksum: verify,
            ..ParserOptions::default()
        };
        let mut best = f64::MAX;
        let mut best_cpu = f64::MAX;
        let mut seen = 0u64;
        for _ in 0..3 {
            let start = Instant::now();
            let cpu0 = thread_cpu_seconds();
            let mut p = RdbParser::new(opts.clone());
            seen = 0;
            for piece in rdb.chunks(64 * 1024) {
                p.feed(piece);
                while let Some(item) = p.next_item().expect("parse") {
                    if matches!(&item, Item::Key(_)) || matches!(&item, Item::Chunk(c) if c.last) {
                        seen += 1;
                    }
                }
            }
            p.finish().expect("complete");
            best = best.min(start.elapsed().as_secs_f64());
            if let (Some(a), Some(b)) = (cpu0, thread_cpu_seconds()) {
                best_cpu = best_cpu.min(b - a);
            }
        }
        assert_eq!(seen, keys, "every key parsed");
        println!(
            "{label}: wall best of 3 {best:.3} s  {:.1} MB/s  {:.0} keys/s",
            rdb.len() as f64 / 1e6 / best,
            keys as f64 / best
        );
        if best_cpu < f64::MAX {
            println!(
                "{label}: CPU best of 3 {best_cpu:.3} s  {:.1} MB/s  {:.0} keys/s",
                rdb.len() as f64 / 1e6 / best_cpu,
                keys as f64 / best_cpu
            );
        }
    }
}
