//! DUMP payloads, as `RESTORE` carries them: `decode_value` on the input taken as a value
//! body, for every RDB version a DUMP can carry (6..=12, and Valkey's 80 and 81) with and
//! without the Valkey flag, and `dump::unframe` on the input taken as a whole payload.
//! Checked: no panic, hang or huge allocation; an unframed payload is framed back to the
//! same bytes, and its body decodes (or fails) without panicking under its own version.
//! Seeds: the `dump_body` of every key of the RDB fixtures, raw and framed (exported by the
//! rdb_parser binary, see deploy/local/fuzz.sh).
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_sync_rdb::{Value, decode_value, dump};

fn check_value(v: &Value) {
    // Touch the value the way a consumer would.
    let _ = (v.len(), v.is_empty());
    // Module values are opaque and cannot be split, so they do not extend.
    if !matches!(v, Value::Module { .. }) {
        let mut copy = v.clone();
        assert!(
            copy.extend_with(v.clone()),
            "a value does not extend with its own kind"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    for version in (6..=12).chain(80..=81) {
        for valkey in [false, true] {
            if let Ok(v) = decode_value(data, version, valkey) {
                check_value(&v);
            }
        }
    }
    if let Ok((version, body)) = dump::unframe(data) {
        assert_eq!(dump::frame(body, version), data, "frame(unframe(payload))");
        if let Ok(v) = decode_value(body, u32::from(version), false) {
            check_value(&v);
        }
    }
});
