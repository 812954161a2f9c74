//! zstd per chunk; chunks that do not shrink are stored raw.

use std::cell::RefCell;

use crate::error::{Error, Result};

thread_local! {
    // One zstd context per thread, reused: creating one per chunk costs time and memory.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// The zstd level backups use unless told otherwise: level 1, as Proxmox Backup Server
/// stores its chunks. On the comparison set it made the initial backup 14 % faster than
/// level 3 for a repository 1.8 % larger (docs/DECISIONS.md); `--compression` or a
/// policy's `compression` trades the other way.
pub const DEFAULT_LEVEL: i32 = 1;

/// Bytes of each of the three samples a large blob is tried on first.
const SAMPLE: usize = 16 << 10;

/// Compresses `data` at `level`; returns `None` when compression would not save space.
///
/// A blob of more than 16 samples is first tried on three samples (start, middle, end):
/// when none of them shrinks by 1/32, the blob is taken as incompressible (already
/// compressed or encrypted data) and the full compression, the costliest step of a backup
/// of such data, is skipped.
pub fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    compress_into(data, level, &mut out).then_some(out)
}

/// [`compress`] into `out` (cleared first), a buffer the caller reuses; returns whether
/// `out` holds the compressed data.
pub fn compress_into(data: &[u8], level: i32, out: &mut Vec<u8>) -> bool {
    super::recycle(out);
    if level == 0 || data.len() < 64 {
        return false;
    }
    COMPRESSOR.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            let Ok(z) = zstd::bulk::Compressor::new(level) else {
                return false;
            };
            *slot = Some((level, z));
        }
        let Some((_, z)) = slot.as_mut() else {
            return false;
        };
        out.reserve(zstd::zstd_safe::compress_bound(data.len()));
        let mut shrinks = |part: &[u8], out: &mut Vec<u8>| {
            out.clear();
            z.compress_to_buffer(part, out)
                .is_ok_and(|n| saves(n, part.len()))
        };
        if data.len() > 16 * SAMPLE {
            let mid = data.len() / 2 - SAMPLE / 2;
            if ![0, mid, data.len() - SAMPLE]
                .into_iter()
                .any(|at| shrinks(&data[at..at + SAMPLE], out))
            {
                out.clear();
                return false;
            }
        }
        let ok = shrinks(data, out);
        if !ok {
            out.clear();
        }
        ok
    })
}

/// Whether compressing `len` bytes to `compressed` is worth it: it must save at least 1/32
/// of the size, as decompressing costs time.
fn saves(compressed: usize, len: usize) -> bool {
    compressed + len / 32 < len
}

/// Decompresses a blob whose plaintext length is known to be `raw_len`.
pub fn decompress(data: &[u8], raw_len: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    decompress_into(data, raw_len, &mut out)?;
    Ok(out)
}

/// [`decompress`] into `out` (cleared first, its capacity kept), a buffer the caller reuses.
pub fn decompress_into(data: &[u8], raw_len: usize, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    super::reserve_reused(out, raw_len);
    DECOMPRESSOR
        .with_borrow_mut(|slot| {
            if slot.is_none() {
                *slot = Some(zstd::bulk::Decompressor::new()?);
            }
            let z = slot.as_mut().expect("just set");
            z.decompress_to_buffer(data, out)
        })
        .map_err(|e| Error::corrupt(format!("zstd data is corrupt: {e}")))?;
    if out.len() != raw_len {
        return Err(Error::corrupt(format!(
            "decompressed to {} bytes, expected {raw_len}",
            out.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_raw_fallback() {
        let text = b"backstop ".repeat(1000);
        let c = compress(&text, 3).expect("text compresses");
        assert!(c.len() < text.len() / 10);
        assert_eq!(decompress(&c, text.len()).unwrap(), text);
        let mut rng = fastrand::Rng::with_seed(1);
        let noise: Vec<u8> = (0..10_000).map(|_| rng.u8(..)).collect();
        assert!(compress(&noise, 3).is_none());
        // Large: decided on samples. Noise with text in the middle is still compressed.
        let big: Vec<u8> = (0..1 << 20).map(|_| rng.u8(..)).collect();
        assert!(compress(&big, 3).is_none());
        let mut mixed = big.clone();
        mixed[400 << 10..700 << 10].copy_from_slice(&b"backstop ".repeat(40_000)[..300 << 10]);
        assert!(compress(&mixed, 3).is_some());
        assert!(decompress(&c, text.len() - 1).is_err());
        assert!(decompress(b"garbage", 10).is_err());
    }
}
