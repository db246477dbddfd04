//! Lua script bodies seen in the stream or the snapshot, by SHA1, so that an `EVALSHA`
//! (sent verbatim by masters before 5.0) can carry the body its destination may lack.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

/// Most bytes of script bodies kept; the oldest go first beyond it. Scripts are small and
/// few in practice; the cap only keeps a script-generating workload from growing memory.
const MAX_BYTES: usize = 64 * 1024 * 1024;

/// Scripts by lower-case hex SHA1.
#[derive(Debug, Default)]
pub struct ScriptCache {
    by_sha: HashMap<String, Bytes>,
    order: VecDeque<String>,
    bytes: usize,
}

/// Lower-case hex SHA1 of `body`, as `SCRIPT LOAD` returns it.
pub fn sha1_hex(body: &[u8]) -> String {
    sha1_smol::Sha1::from(body).digest().to_string()
}

impl ScriptCache {
    /// Remembers `body`; returns its SHA1.
    pub fn remember(&mut self, body: Bytes) -> String {
        let sha = sha1_hex(&body);
        if self.by_sha.contains_key(&sha) {
            return sha;
        }
        self.bytes += body.len();
        self.by_sha.insert(sha.clone(), body);
        self.order.push_back(sha.clone());
        while self.bytes > MAX_BYTES {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(b) = self.by_sha.remove(&old) {
                self.bytes -= b.len();
            }
        }
        sha
    }

    /// The body whose SHA1 is `sha` (hex, any case).
    pub fn get(&self, sha: &[u8]) -> Option<&Bytes> {
        let sha = std::str::from_utf8(sha).ok()?.to_ascii_lowercase();
        self.by_sha.get(&sha)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_redis() {
        // `SCRIPT LOAD "return 1"` answers this.
        assert_eq!(
            sha1_hex(b"return 1"),
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
        let mut c = ScriptCache::default();
        c.remember(Bytes::from_static(b"return 1"));
        assert!(c.get(b"E0E1F9FABFC9D4800C877A703B823AC0578FF8DB").is_some());
    }
}
