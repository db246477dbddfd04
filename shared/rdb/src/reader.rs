//! A transactional cursor over the bytes received so far.
//!
//! Every read either succeeds or reports [`Stop::More`] ("the bytes are not here yet").
//! The caller parses one small unit at a time and only commits the cursor position when
//! the whole unit succeeded, so a unit interrupted by the end of the input is simply parsed
//! again from its start once more bytes arrive. Units are small (one opcode, one element,
//! one encoded node), and the completeness test of a long string is a length comparison,
//! so retrying costs O(1) per feed, not O(unit).

use bytes::Bytes;

use crate::encoding;
use crate::error::RdbError;

/// Why a read stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// Not enough input yet; retry the unit after the next feed.
    More,
    /// The input is wrong.
    Fail(RdbError),
}

impl From<RdbError> for Stop {
    fn from(e: RdbError) -> Self {
        Stop::Fail(e)
    }
}

pub(crate) type PResult<T> = Result<T, Stop>;

/// A decoded length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Length {
    /// A plain length.
    Len(u64),
    /// The `11xxxxxx` form: a special string encoding number follows.
    Encoded(u8),
}

/// LZF cannot expand data by more than this factor: its longest back-reference costs
/// 3 input bytes for 264 output bytes. A header claiming more is corrupt, and rejecting it
/// up front keeps a 10-byte input from asking for a huge output buffer.
const LZF_MAX_RATIO: u64 = 88;

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    /// When the input is a `Bytes` (a complete DUMP body), strings are handed out as
    /// slices of it instead of copies.
    backing: Option<&'a Bytes>,
    pos: usize,
    base: u64,
}

/// A string read for a decoder: borrowed from the input, or shared (a slice of the backing
/// `Bytes`, or the owned result of decompression) so that the decoder's elements can be
/// handed out without copying.
pub(crate) enum Data<'a> {
    Slice(&'a [u8]),
    Shared(Bytes),
}

impl Data<'_> {
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Data::Slice(s) => s,
            Data::Shared(b) => b,
        }
    }

    /// `part` as `Bytes`: a zero-copy slice when `part` lies inside shared data (it does
    /// for everything a decoder returns), a copy otherwise. Never panics, unlike
    /// `Bytes::slice_ref`, whatever `part` is.
    pub(crate) fn sub(&self, part: &[u8]) -> Bytes {
        if let Data::Shared(b) = self {
            let start = (part.as_ptr() as usize).wrapping_sub(b.as_ptr() as usize);
            if start <= b.len() && part.len() <= b.len() - start {
                return b.slice(start..start + part.len());
            }
        }
        Bytes::copy_from_slice(part)
    }
}

impl<'a> Reader<'a> {
    /// `base` is the absolute offset of `buf[0]`, used only to name offsets in errors.
    pub(crate) fn new(buf: &'a [u8], base: u64) -> Self {
        Reader {
            buf,
            backing: None,
            pos: 0,
            base,
        }
    }

    /// A reader whose strings are zero-copy slices of `data`.
    pub(crate) fn shared(data: &'a Bytes, base: u64) -> Self {
        Reader {
            buf: data,
            backing: Some(data),
            pos: 0,
            base,
        }
    }

    /// `n` bytes as `Bytes`: a slice of the backing when there is one, else a copy.
    pub(crate) fn bytes(&mut self, n: usize) -> PResult<Bytes> {
        let start = self.pos;
        let s = self.take(n)?;
        Ok(match self.backing {
            Some(b) => b.slice(start..start + n),
            None => Bytes::copy_from_slice(s),
        })
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Goes back to a position returned by [`Reader::pos`] (to abandon a partial unit).
    pub(crate) fn rewind(&mut self, pos: usize) {
        self.pos = pos.min(self.buf.len());
    }

    pub(crate) fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn u8(&mut self) -> PResult<u8> {
        let b = *self.buf.get(self.pos).ok_or(Stop::More)?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        if self.remaining() < n {
            return Err(Stop::More);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Takes up to `n` bytes, at least one; `More` only when nothing is available.
    pub(crate) fn take_some(&mut self, n: usize) -> PResult<&'a [u8]> {
        let n = n.min(self.remaining());
        if n == 0 {
            return Err(Stop::More);
        }
        self.take(n)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> PResult<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// An 8-byte little-endian millisecond time. RDB 9+ fixed the byte order to little
    /// endian; before, it was the writing host's order. Every server we replicate from
    /// (x86-64, ARM64) is little endian, so both read the same way.
    pub(crate) fn ms_time(&mut self) -> PResult<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    pub(crate) fn f64_le(&mut self) -> PResult<f64> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    pub(crate) fn length(&mut self) -> PResult<Length> {
        let at = self.offset();
        let b = self.u8()?;
        match b >> 6 {
            0 => Ok(Length::Len(u64::from(b & 0x3F))),
            1 => {
                let b2 = self.u8()?;
                Ok(Length::Len((u64::from(b & 0x3F) << 8) | u64::from(b2)))
            }
            3 => Ok(Length::Encoded(b & 0x3F)),
            _ => match b {
                0x80 => Ok(Length::Len(u64::from(u32::from_be_bytes(self.array()?)))),
                0x81 => Ok(Length::Len(u64::from_be_bytes(self.array()?))),
                _ => Err(RdbError::BadLength {
                    offset: at,
                    byte: b,
                }
                .into()),
            },
        }
    }

    /// A length that must be plain (counts, ids, opcodes).
    pub(crate) fn len(&mut self) -> PResult<u64> {
        let at = self.offset();
        match self.length()? {
            Length::Len(n) => Ok(n),
            Length::Encoded(e) => Err(RdbError::UnexpectedEncodedLength {
                offset: at,
                byte: 0xC0 | e,
            }
            .into()),
        }
    }

    /// A string (raw, integer-encoded or LZF), copied out of the input.
    pub(crate) fn string(&mut self, max: u64) -> PResult<Bytes> {
        let at = self.offset();
        match self.length()? {
            Length::Len(n) => {
                let n = check_len(at, "string", n, max)?;
                self.bytes(n)
            }
            Length::Encoded(enc) => self.encoded_string(at, enc, max),
        }
    }

    /// A string that is only needed as bytes to hand to a decoder.
    pub(crate) fn blob(&mut self, max: u64) -> PResult<Data<'a>> {
        let at = self.offset();
        match self.length()? {
            Length::Len(n) => {
                let n = check_len(at, "string", n, max)?;
                if self.backing.is_some() {
                    return Ok(Data::Shared(self.bytes(n)?));
                }
                Ok(Data::Slice(self.take(n)?))
            }
            Length::Encoded(enc) => Ok(Data::Shared(self.encoded_string(at, enc, max)?)),
        }
    }

    pub(crate) fn encoded_string(&mut self, at: u64, enc: u8, max: u64) -> PResult<Bytes> {
        let v: i64 = match enc {
            0 => i64::from(i8::from_le_bytes(self.array()?)),
            1 => i64::from(i16::from_le_bytes(self.array()?)),
            2 => i64::from(i32::from_le_bytes(self.array()?)),
            3 => {
                let (clen, len) = self.lzf_header(at, max)?;
                let input = self.take(clen)?;
                return Ok(Bytes::from(lzf_decompress(at, input, len, max)?));
            }
            _ => {
                return Err(RdbError::BadStringEncoding {
                    offset: at,
                    encoding: enc,
                }
                .into());
            }
        };
        Ok(Bytes::from(v.to_string()))
    }

    /// Reads the two lengths after an LZF marker and checks them against the limits.
    pub(crate) fn lzf_header(&mut self, at: u64, max: u64) -> PResult<(usize, usize)> {
        let clen = self.len()?;
        let len = self.len()?;
        let clen = check_len(at, "compressed string", clen, max)?;
        let len = check_len(at, "decompressed string", len, max)?;
        if clen == 0 || (len as u64) > (clen as u64).saturating_mul(LZF_MAX_RATIO) {
            return Err(RdbError::corrupt(
                at,
                "LZF string",
                format!("{clen} compressed bytes cannot hold {len} bytes"),
            )
            .into());
        }
        Ok((clen, len))
    }

    /// Skips a string without decoding it (module values, where only the end matters).
    pub(crate) fn skip_string(&mut self, max: u64) -> PResult<()> {
        let at = self.offset();
        match self.length()? {
            Length::Len(n) => {
                let n = check_len(at, "string", n, max)?;
                self.take(n)?;
            }
            Length::Encoded(0) => {
                self.take(1)?;
            }
            Length::Encoded(1) => {
                self.take(2)?;
            }
            Length::Encoded(2) => {
                self.take(4)?;
            }
            Length::Encoded(3) => {
                let (clen, _) = self.lzf_header(at, max)?;
                self.take(clen)?;
            }
            Length::Encoded(e) => {
                return Err(RdbError::BadStringEncoding {
                    offset: at,
                    encoding: e,
                }
                .into());
            }
        }
        Ok(())
    }

    /// Skips a type-3 score (checked when the value is decoded).
    pub(crate) fn skip_text_double(&mut self) -> PResult<()> {
        let n = self.u8()?;
        if n < 253 {
            self.take(usize::from(n))?;
        }
        Ok(())
    }

    /// A score of RDB type 3: a length byte then the text, with 253/254/255 meaning
    /// NaN/+inf/-inf.
    pub(crate) fn text_double(&mut self) -> PResult<f64> {
        let at = self.offset();
        let n = self.u8()?;
        match n {
            255 => Ok(f64::NEG_INFINITY),
            254 => Ok(f64::INFINITY),
            253 => Ok(f64::NAN),
            _ => {
                let text = self.take(usize::from(n))?;
                parse_double(text).ok_or_else(|| {
                    RdbError::corrupt(
                        at,
                        "score",
                        format!("not a number: {:?}", String::from_utf8_lossy(text)),
                    )
                    .into()
                })
            }
        }
    }
}

/// Checks an untrusted length against the limit before anything is sized by it.
pub(crate) fn check_len(at: u64, what: &'static str, n: u64, max: u64) -> Result<usize, RdbError> {
    if n > max {
        return Err(RdbError::TooLong {
            offset: at,
            what,
            len: n,
            max,
        });
    }
    usize::try_from(n).map_err(|_| RdbError::TooLong {
        offset: at,
        what,
        len: n,
        max: usize::MAX as u64,
    })
}

pub(crate) fn lzf_decompress(
    at: u64,
    input: &[u8],
    len: usize,
    max: u64,
) -> Result<Vec<u8>, RdbError> {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let out = encoding::lzf::decompress(input, len, max).map_err(|source| RdbError::Encoding {
        offset: at,
        what: "LZF string",
        source,
    })?;
    if out.len() != len {
        return Err(RdbError::corrupt(
            at,
            "LZF string",
            format!("decompressed to {} bytes, header says {len}", out.len()),
        ));
    }
    Ok(out)
}

/// Parses a score written as text (`%.17g` in old servers, shortest round-trip form in
/// new ones, `inf`/`-inf`/`nan` for the specials). Rust's parser is correctly rounded like
/// C's `strtod`, so the f64 bits come out exactly as the writer had them.
pub(crate) fn parse_double(text: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(text).ok()?;
    // sscanf("%lg") skips leading white space; nothing legitimate writes any, but a loader
    // that accepts what Redis accepts is the least surprising one.
    let s = s.trim_start();
    s.parse::<f64>().ok()
}
