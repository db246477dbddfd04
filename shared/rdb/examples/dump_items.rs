//! Prints the items of an RDB file (a debugging aid): `cargo run --example dump_items -- FILE`.
use redis_sync_rdb::{Item, ParserOptions, RdbParser};

fn main() {
    let path = std::env::args().nth(1).expect("usage: dump_items FILE");
    let data = std::fs::read(&path).expect("read");
    let mut p = RdbParser::new(ParserOptions::default());
    p.feed(&data);
    loop {
        match p.next_item() {
            Ok(Some(Item::Key(k))) => println!(
                "KEY db={} key={:?} type={} exp={:?} idle={:?} freq={:?} value={:?}",
                k.db,
                String::from_utf8_lossy(&k.key),
                k.rdb_type,
                k.expire_at_ms,
                k.idle,
                k.freq,
                format!("{:?}", k.value)
                    .chars()
                    .take(usize::MAX)
                    .collect::<String>()
            ),
            Ok(Some(it)) => println!(
                "{}",
                format!("{it:?}")
                    .chars()
                    .take(usize::MAX)
                    .collect::<String>()
            ),
            Ok(None) => break,
            Err(e) => {
                println!("ERROR: {e}");
                return;
            }
        }
    }
    println!("finish: {:?}", p.finish());
}
