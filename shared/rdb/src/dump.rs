//! The `DUMP` / `RESTORE` payload framing.
//!
//! A DUMP payload is a value body (type byte + serialised value, see
//! [`crate::KeyRecord::dump_body`]) followed by a 10-byte trailer: the RDB version as
//! 2 bytes little endian, then the CRC-64 (Redis's Jones polynomial) of everything before
//! it, 8 bytes little endian. `RESTORE` refuses a payload whose CRC does not match or whose
//! version is newer than its own.

use crate::encoding::crc64::crc64;
use crate::error::RdbError;

/// Appends the version and CRC trailer to a value body.
pub fn frame(body: &[u8], rdb_version: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 10);
    out.extend_from_slice(body);
    out.extend_from_slice(&rdb_version.to_le_bytes());
    let crc = crc64(0, &out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a payload's trailer and splits it into (RDB version, body).
pub fn unframe(payload: &[u8]) -> Result<(u16, &[u8]), RdbError> {
    if payload.len() < 10 {
        return Err(RdbError::DumpTooShort { len: payload.len() });
    }
    let (covered, stored) = payload.split_at(payload.len() - 8);
    let mut crc = [0u8; 8];
    crc.copy_from_slice(stored);
    let found = u64::from_le_bytes(crc);
    let expected = crc64(0, covered);
    if found != expected {
        return Err(RdbError::DumpChecksumMismatch { expected, found });
    }
    let (body, version) = covered.split_at(covered.len() - 2);
    Ok((u16::from_le_bytes([version[0], version[1]]), body))
}
